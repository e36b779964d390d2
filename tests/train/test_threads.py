"""The default CPU thread policy (omniformer.train.threads): its logic, with the load injected; not timed."""
import os

import pytest
import torch

from omniformer.train import threads as th


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_users_thread_count_wins(restore_threads):
    def never():
        raise AssertionError("the load is not read when the user chose")
    assert th.configure_threads(1, load=never, cores=2, environ={}) == 1
    assert torch.get_num_threads() == 1
    # even beside a fully busy machine, and above the core count
    assert th.configure_threads(3, load=lambda: 2.0, cores=2, environ={}) == 3
    assert torch.get_num_threads() == 3


def test_omp_num_threads_in_the_environment_wins(restore_threads):
    # torch started with OMP_NUM_THREADS threads: they are left as they are
    torch.set_num_threads(1)
    for env in ({"OMP_NUM_THREADS": "1"}, {"MKL_NUM_THREADS": "1"}):
        assert th.configure_threads(0, load=lambda: 0.0, cores=2, environ=env) == 1
        assert torch.get_num_threads() == 1
    # unset, empty or not a count: the policy decides
    for env in ({}, {"OMP_NUM_THREADS": ""}, {"OMP_NUM_THREADS": "0"}, {"OMP_NUM_THREADS": "many"}):
        assert th.configure_threads(0, load=lambda: 0.0, cores=2, environ=env) == 2


@pytest.mark.parametrize("load, expected", [(0.0, 2), (0.3, 2), (0.49, 2), (0.5, 1), (1.0, 1), (1.4, 1),
                                            (2.0, 1), (7.0, 1), (None, 2)])
def test_the_policy_leaves_busy_cores_to_their_process(restore_threads, load, expected):
    assert th.choose_threads(2, load) == expected
    assert th.configure_threads(0, load=lambda: load, cores=2, environ={}) == expected
    assert torch.get_num_threads() == expected


@pytest.mark.parametrize("cores", [1, 2, 3, 8])
@pytest.mark.parametrize("load", [None, 0.0, 0.2, 0.5, 0.99, 1.5, 2.5, 3.7, 100.0])
def test_the_count_is_between_one_and_the_cores(cores, load):
    assert 1 <= th.choose_threads(cores, load) <= cores
    if load is not None and load < cores:
        assert th.choose_threads(cores, load) == max(1, cores - int(load + 0.5))


def test_configure_reads_the_usable_cores(restore_threads):
    chosen = th.configure_threads(0, load=lambda: 0.0, environ={})
    assert chosen == len(th.usable_cores()) == torch.get_num_threads()
    assert 1 <= chosen <= (os.cpu_count() or 1)


def fake_stat(ticks_before, ticks_after):
    """A /proc/stat reader that returns ``before`` then ``after`` (user, nice, system, idle per cpu)."""
    readings = iter([ticks_before, ticks_after])

    def read():
        return {f"cpu{i}": [u, n, s, idle, 0, 0, 0, 0] for i, (u, n, s, idle) in enumerate(next(readings))}
    return read


def test_other_load_from_proc_stat():
    # cpu0 fully busy (user), cpu1 idle, over 100 ticks each; this process used no CPU
    read = fake_stat([(0, 0, 0, 0), (0, 0, 0, 0)], [(100, 0, 0, 0), (0, 0, 0, 100)])
    load = th.other_load([0, 1], read_stat=read, process_time=lambda: 0.0, sleep=lambda s: None)
    assert load == pytest.approx(1.0)


def test_other_load_leaves_out_niced_processes_unless_we_are_niced():
    # both cores busy, one of them in niced processes: they yield to a process at nice 0
    for count_niced, expected in ((False, 1.0), (True, 2.0)):
        read = fake_stat([(0, 0, 0, 0), (0, 0, 0, 0)], [(100, 0, 0, 0), (0, 100, 0, 0)])
        load = th.other_load([0, 1], read_stat=read, process_time=lambda: 0.0, sleep=lambda s: None,
                             count_niced=count_niced)
        assert load == pytest.approx(expected)


def test_other_load_leaves_out_this_process():
    # cpu0 busy all the time, of which this process used half a core over the 0.1 s sample
    read = fake_stat([(0, 0, 0, 0), (0, 0, 0, 0)], [(100, 0, 0, 0), (0, 0, 0, 100)])
    own, clock = iter([0.0, 0.05]), iter([0.0, 0.1])
    load = th.other_load([0, 1], read_stat=read, process_time=lambda: next(own), sleep=lambda s: None,
                         clock=lambda: next(clock))
    assert load == pytest.approx(0.5)
    # never below zero
    read = fake_stat([(0, 0, 0, 0), (0, 0, 0, 0)], [(10, 0, 0, 90), (0, 0, 0, 100)])
    own, clock = iter([0.0, 0.1]), iter([0.0, 0.1])
    assert th.other_load([0, 1], read_stat=read, process_time=lambda: next(own), sleep=lambda s: None,
                         clock=lambda: next(clock)) == 0.0


def test_other_load_is_none_without_proc_stat():
    def unreadable():
        raise OSError("no /proc")
    assert th.other_load([0, 1], read_stat=unreadable, sleep=lambda s: None) is None
    assert th.choose_threads(4, None) == 4


class FakeMachine:
    """/proc/stat, this process's CPU time and a clock that a test moves on by hand."""

    def __init__(self, cpus=2):
        self.ticks = {f"cpu{i}": [0] * 8 for i in range(cpus)}
        self.own = self.now = 0.0
        self.reads = 0

    def read_stat(self):
        self.reads += 1
        return {k: list(v) for k, v in self.ticks.items()}

    def run(self, seconds, other, own=0.0, hz=100):
        """``seconds`` pass with ``other`` cores' worth of other processes' work and ``own`` of ours."""
        n = len(self.ticks)
        per_cpu = [(min(1.0, max(0.0, other + own - i))) for i in range(n)]  # busy fraction, cpu by cpu
        for i, busy in enumerate(per_cpu):
            t = self.ticks[f"cpu{i}"]
            t[0] += round(busy * seconds * hz)
            t[3] += round((1 - busy) * seconds * hz)
        self.own += own * seconds
        self.now += seconds


def governor(machine, requested=0, environ=None, load=0.0):
    return th.ThreadGovernor(requested, every=2.0, load=lambda: load, read_stat=machine.read_stat,
                             process_time=lambda: machine.own, clock=lambda: machine.now, cores=2,
                             environ={} if environ is None else environ)


def test_the_governor_follows_the_load_during_training(restore_threads):
    m = FakeMachine()
    g = governor(m)
    assert g.threads == 2 == torch.get_num_threads()
    m.run(1.0, other=1.0, own=1.0)
    assert g.step() == 2                      # looks again only every 2 s
    m.run(1.5, other=0.7, own=1.3)            # another process got ~2/3 of a core beside our 2 threads
    assert g.step() == 1 == torch.get_num_threads()
    m.run(2.5, other=1.0, own=1.0)            # it stays: one thread
    assert g.step() == 1
    m.run(2.5, other=0.0, own=1.0)            # it went away: both cores again
    assert g.step() == 2 == torch.get_num_threads()
    assert [threads for _, threads in g.changes] == [1, 2]


def test_the_governor_leaves_niced_load_and_our_own_alone(restore_threads):
    m = FakeMachine()
    g = governor(m)
    m.run(3.0, other=0.0, own=2.0)            # both cores ours
    assert g.step() == 2
    m.run(3.0, other=0.0, own=1.0)            # one core ours, the other idle ...
    m.ticks["cpu1"][3] -= 300                 # ... no: busy with a niced process the whole time
    m.ticks["cpu1"][1] += 300
    assert g.step() == 2
    assert g.changes == []


def test_the_governor_starts_from_the_load_it_reads(restore_threads):
    assert governor(FakeMachine(), load=1.0).threads == 1 == torch.get_num_threads()


@pytest.mark.parametrize("requested, environ", [(2, {}), (1, {}), (0, {"OMP_NUM_THREADS": "1"})])
def test_the_governor_never_overrides_the_user(restore_threads, requested, environ):
    torch.set_num_threads(1)
    m = FakeMachine()
    g = governor(m, requested, environ)
    expected = requested or 1
    assert g.fixed and g.threads == expected == torch.get_num_threads()
    for other in (1.0, 0.0, 2.0):
        m.run(3.0, other=other, own=1.0)
        assert g.step() == expected == torch.get_num_threads()
    assert m.reads == 0


def test_the_governor_without_proc_stat_keeps_its_count(restore_threads):
    def unreadable():
        raise OSError("no /proc")
    clock = iter(range(100))
    g = th.ThreadGovernor(0, every=2.0, load=lambda: None, read_stat=unreadable, clock=lambda: next(clock),
                          cores=2, environ={})
    assert g.threads == 2
    for _ in range(5):
        assert g.step() == 2
