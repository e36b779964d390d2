"""Multimodal pretraining: masked language modelling, cross-modal matching, contrastive alignment
and masked patch modelling over one fusion encoder, with weights from ``ObjectiveConfig``.

One step costs two fusion passes: the masked-text pass (MLM, masked patches, the positive
side of matching) and one pass over mismatched pairs (the negatives of matching, chosen
as hard negatives from the contrastive similarities).
"""
from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, ObjectiveConfig
from .base import Task, TaskError
from ..model import ContrastiveHead, MaskedPatchHead, MatchingHead, MLMHead, Omniformer, init_weights
from ..model.decoder import TextDecoder
from ..model.generate import row_argmax
from ..objectives import hard_negative_indices, info_nce, mask_tokens, masked_patch_loss, matching_loss
from ..registry import get_modality
from .qa.heads import BagOfWords, GuidedAnswerHead, WordSpotter
from .qa.losses import word_presence_loss



def present(batch: dict[str, torch.Tensor], modality: str) -> torch.Tensor | None:
    """(B,) bool: which samples have ``modality``; None when the batch has none."""
    mask = batch.get(f"{modality}_mask")
    if mask is None:
        return None
    return mask if mask.ndim == 1 else mask.any(dim=1)


class PretrainingModel(nn.Module):
    def __init__(self, cfg: ModelConfig, objectives: ObjectiveConfig, special_ids: list[int], mask_id: int):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("model.vocab_size must be set from the tokenizer before pretraining")
        self.cfg, self.objectives = cfg, objectives
        self.special_ids, self.mask_id = list(special_ids), mask_id
        self.backbone = Omniformer(cfg)
        self.mlm_head = MLMHead(cfg.width, cfg.vocab_size, self.backbone.embedders["text"].token.weight)
        self.matching_head = MatchingHead(cfg.width)
        self.contrastive_head = ContrastiveHead(cfg.width, cfg.width, cfg.modalities)
        self.patch_heads = nn.ModuleDict({
            m: MaskedPatchHead(cfg.width, self.backbone.embedders[m].patch_dim)
            for m in cfg.modalities if m in ("image", "audio")
        }) if objectives.masked_patch > 0 else nn.ModuleDict()
        # Spoken captions teach a word spotter which words were said (QA hears spoken questions with it).
        self.word_spotter = None
        if objectives.word_spotting > 0 and {"text", "audio"} <= set(cfg.modalities):
            self.word_spotter = WordSpotter.from_config(cfg)
            self.word_spotter.apply(init_weights)
        # Matching judged the way the guided QA head answers: the caption queries the image
        # tokens. "The red object is on the left" against a similar image holds or not
        # depending on which token "red" picks, so the head learns to bind words to objects
        # from captions, before any question is labelled (QAModel.load_pretrained takes it).
        self.guided_matching_head = None
        if objectives.guided_matching > 0 and {"text", "image"} <= set(cfg.modalities):
            self.guided_matching_head = GuidedAnswerHead(cfg.width, cfg.heads, 1, ["text"], objectives.guided_glimpses,
                                                         dropout=cfg.dropout, eps=cfg.layer_norm_eps)
            self.guided_matching_head.apply(init_weights)

        # Next-word prediction: the decoder the caption and translate tasks start from, its
        # embedding the backbone's text embedding (tied, as theirs is).
        self.decoder = None
        if objectives.next_word > 0 and "text" in cfg.modalities:
            self.decoder = TextDecoder(cfg.vocab_size, cfg.text.max_len, objectives.next_word_depth, cfg.width,
                                       cfg.heads, int(cfg.width * cfg.mlp_ratio), cfg.dropout, cfg.attn_dropout,
                                       cfg.norm, cfg.layer_norm_eps, cfg.activation,
                                       embedding=self.backbone.embedders["text"].token)
            for name, module in self.decoder.named_children():
                if name != "token":
                    module.apply(init_weights)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        obj = self.objectives
        out: dict[str, Any] = {}
        losses: list[torch.Tensor] = []
        inputs = dict(batch)

        mlm_labels = None
        if obj.mlm > 0 and "text" in batch:
            inputs["text"], mlm_labels = mask_tokens(batch["text"], batch["text_mask"], self.cfg.vocab_size,
                                                     self.special_ids, obj.mlm_probability, mask_id=self.mask_id)
        token_masks, patch_targets = {}, {}
        for m in self.patch_heads:
            if m in batch:
                embedder = self.backbone.embedders[m]
                targets = embedder.patchify(batch)
                keep = (embedder.token_mask_from_frames(batch["audio_mask"]) if m == "audio"
                        else batch["image_mask"][:, None].expand(-1, targets.shape[1]))
                chosen = (torch.rand(keep.shape, device=keep.device) < obj.masked_patch_probability) & keep
                token_masks[m], patch_targets[m] = chosen, targets
        fused = self.backbone(inputs, token_masks=token_masks or None)

        if mlm_labels is not None:
            text_hidden = fused.hidden[:, fused.spans["text"]]
            selected = mlm_labels != -100
            if selected.any():  # the vocabulary projection only where a token was masked
                logits = self.mlm_head(text_hidden[selected])
                mlm = F.cross_entropy(logits, mlm_labels[selected])
                out["mlm_loss"] = mlm.detach()
                out["mlm_accuracy"] = (logits.argmax(-1) == mlm_labels[selected]).float().mean()
                losses.append(obj.mlm * mlm)

        for m, chosen in token_masks.items():
            if chosen.any():
                pred = self.patch_heads[m](fused.hidden[:, fused.spans[m]])
                mpm = masked_patch_loss(pred, patch_targets[m], chosen)
                out[f"masked_{m}_loss"] = mpm.detach()
                losses.append(obj.masked_patch * mpm)

        if self.word_spotter is not None and "audio" in batch and "text" in batch:
            rows = present(batch, "text") & present(batch, "audio")
            if rows.any():  # the unmasked caption is the recording's transcript
                heard = self.word_spotter.hear(batch)
                words = word_presence_loss(heard, batch["text"], batch["text_mask"], rows)
                out["word_spotting_loss"] = words.detach()
                losses.append(obj.word_spotting * words)

        # Contrastive alignment between every pair of modality towers, on samples that have both.
        pooled = {m: self.backbone.pool(*fused.unimodal[m]) for m in fused.unimodal}
        embeddings = self.contrastive_head(pooled)
        pair_similarity: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}
        for a, b in itertools.combinations(sorted(embeddings), 2):
            both = present(batch, a) & present(batch, b)
            if both.sum() < 2:
                continue
            ea, eb = embeddings[a][both], embeddings[b][both]
            pair_similarity[(a, b)] = (both, (ea @ eb.t()).detach())
            if obj.contrastive > 0:
                nce = info_nce(ea, eb, self.contrastive_head.logit_scale)
                out[f"contrastive_{a}_{b}_loss"] = nce.detach()
                losses.append(obj.contrastive * nce / len(embeddings))

        if self.guided_matching_head is not None and ("image", "text") in pair_similarity:
            guided = self._guided_matching(batch, fused, *pair_similarity[("image", "text")], obj.hard_negatives)
            if guided is not None:
                loss, accuracy = guided
                out["guided_matching_loss"], out["guided_matching_accuracy"] = loss.detach(), accuracy
                losses.append(obj.guided_matching * loss)

        if obj.matching > 0 and pair_similarity:
            match = self._matching(batch, fused.cls, pair_similarity, obj.hard_negatives)
            if match is not None:
                loss, accuracy = match
                out["matching_loss"], out["matching_accuracy"] = loss.detach(), accuracy
                losses.append(obj.matching * loss)

        if self.decoder is not None and "text" in batch:
            next_word = self._next_word(batch)
            if next_word is not None:
                loss, accuracy = next_word
                out["next_word_loss"], out["next_word_accuracy"] = loss.detach(), accuracy
                losses.append(obj.next_word * loss)

        out["loss"] = torch.stack(losses).sum() if losses else fused.cls.sum() * 0.0
        return out

    def _next_word(self, batch):
        """Each text written word by word from the sample's other modalities (a caption from its
        image and speech), read by the backbone without the text, so nothing can be copied; a
        text with no other modality is continued from its own start (no cross-attention)."""
        text, text_mask = batch["text"], batch["text_mask"]
        has_text = present(batch, "text")
        sources = [m for m in self.cfg.modalities if m != "text" and present(batch, m) is not None]
        with_source = torch.zeros_like(has_text)
        for m in sources:
            with_source |= present(batch, m)
        groups = [(has_text & with_source, True), (has_text & ~with_source, False)]
        total, correct, count = text.new_zeros((), dtype=torch.float32), 0, 0
        for rows, read_source in groups:
            if not rows.any():
                continue
            context = context_mask = None
            if read_source:
                keys = {k for m in sources for k in get_modality(m).batch_keys if k in batch}
                source = self.backbone({k: batch[k][rows] for k in keys})
                context, context_mask = source.hidden, source.mask
            tokens, mask = text[rows], text_mask[rows]
            states = self.decoder.states(tokens[:, :-1], context, context_mask)
            real = mask[:, 1:].bool()  # only real positions reach the output layer
            labels = tokens[:, 1:][real]
            logits = self.decoder.logits(states[real]).float()
            total = total + F.cross_entropy(logits, labels, reduction="sum")
            correct += int((row_argmax(logits.detach()) == labels).sum())
            count += len(labels)
        if not count:
            return None
        return total / count, torch.tensor(correct / count)

    def _matching(self, batch, positive_cls, pair_similarity, hard: bool):
        """True pairs vs pairs with one modality swapped for another sample's (the multimodal
        counterpart of next-sentence prediction). Each sample swaps one modality of one pair."""
        pairs = list(pair_similarity)
        negative = {k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        swapped = torch.zeros(len(batch["index"]), dtype=torch.bool, device=positive_cls.device)
        for i, (a, b) in enumerate(pairs):
            both, sim = pair_similarity[(a, b)]
            members = both.nonzero().squeeze(1)            # global rows that have both modalities
            partner = hard_negative_indices(sim if hard else torch.zeros_like(sim))
            if partner is None:
                continue
            # Spread the pair types over the batch so each is trained every step.
            local = torch.arange(len(members), device=members.device)
            local = local[local % len(pairs) == i]
            rows, partners = members[local], members[partner[local]]
            swap = b if i % 2 == 0 else a
            for key in get_modality(swap).batch_keys:  # a mismatched pair swaps all of them together
                negative[key][rows] = batch[key][partners]
            swapped[rows] = True
        if not swapped.any():
            return None
        negative_cls = self.backbone(negative).cls[swapped]
        pos_logits = self.matching_head(positive_cls)
        neg_logits = self.matching_head(negative_cls)
        loss = matching_loss(pos_logits, neg_logits)
        accuracy = torch.cat([(pos_logits > 0).float(), (neg_logits < 0).float()]).mean()
        return loss, accuracy

    def _guided_matching(self, batch, fused, both, image_text_sim, hard: bool):
        """Each caption with its own image vs with another (a hard negative: an image its text is
        similar to). The caption is read unmasked, as its bag of words, the way QA reads a
        question (``QAModel._question``); images are the embedded tokens of this step's pass, so
        negatives cost no fusion pass. No [CLS] is given (zeros): a [CLS] of the true pair would
        give the answer away."""
        text_to_image = image_text_sim.t()
        partner = hard_negative_indices(text_to_image if hard else torch.zeros_like(text_to_image))
        if partner is None:
            return None
        rows = both.nonzero().squeeze(1)
        text = self.backbone.embedders["text"]
        caption = BagOfWords.written(batch["text"], batch["text_mask"], text.word_vectors()).mean()[rows]
        image, image_mask = (t[rows] for t in fused.embedded["image"])
        no_cls = caption.new_zeros(caption.shape)

        def judge(order):
            return self.guided_matching_head(no_cls, {"text": caption}, image[order], image_mask[order]).squeeze(-1)

        pos_logits, neg_logits = judge(torch.arange(len(rows), device=rows.device)), judge(partner)
        accuracy = torch.cat([(pos_logits > 0).float(), (neg_logits < 0).float()]).mean()
        return matching_loss(pos_logits, neg_logits), accuracy


class PretrainTask(Task):
    """Multimodal pretraining as a task: it composes the losses of ``ObjectiveConfig`` over
    whatever text, images and audio the manifest has; its checkpoints start the other tasks."""

    name = "pretrain"
    summary = "Multimodal pretraining: masked language modelling, matching, contrastive, masked patches."
    recipe = "quickstart"
    general_recipe = "vqa"
    fields = ("image", "text", "audio", "question")

    def config(self, cfg):
        """Pretraining reads no task section: a recipe's ``task:`` belongs to the task fine-tuned next."""
        return None

    def train(self, cfg, init=None, resume: bool = False, progress: bool = True):
        from .pipeline import pretrain
        if init is not None:
            raise TaskError("--init: pretraining starts from scratch or --resume; it takes no initial checkpoint")
        return pretrain(cfg, resume=resume, progress=progress)


TASK = PretrainTask()
