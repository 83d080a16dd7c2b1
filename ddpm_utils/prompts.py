"""Prompts: a tiny vocabulary of words measured on each training image, the conditioning text-to-image models use.

A prompt is PROMPT_LEN token ids, one slot per kind of word: ("thin" | "thick", "upright" | "slanted", class
name), e.g. "thick slanted 7"; an empty slot holds the pad token, and the empty prompt (all pads) is the null
condition of classifier-free guidance, as the null label is for labels. Token ids are 0..len(vocabulary) - 1 and
pad = len(vocabulary), so a prompt model's `num_classes` is its vocabulary size and its null "label" is the pad:
`guided_eps` and label dropout need no change. Words are measured, not annotated:

- ink: the mean brightness (x + 1) / 2; "thin" / "thick" = the lowest / highest third within the image's class
  (a "1" has less ink than an "8" of the same stroke);
- slant: the shear -mu11 / mu02 of the intensity's second moments (positive = the top leans right); "slanted" =
  the highest third of the data set, "upright" = the third with the smallest |slant|.
"""

from __future__ import annotations

import torch

SLOTS = {"thickness": ("thin", "thick"), "slant": ("upright", "slanted")}  # the attribute words, by slot
PROMPT_LEN = len(SLOTS) + 1  # the attribute slots, then the class word
NUM_ATTRIBUTE_WORDS = sum(len(words) for words in SLOTS.values())  # ids 0..3; the class words follow
P_DROP_WORD = 0.3  # training: each word of a prompt is left out with this probability (drop_words)


def vocabulary(class_names) -> list[str]:
    """The words of a prompt model: the attribute words, then the class names (spaces as '-', lower case)."""
    if not class_names:
        raise ValueError("prompts need a labelled data set: the class name is a prompt's last word")
    return [w for words in SLOTS.values() for w in words] + [str(c).replace(" ", "-").lower() for c in class_names]


def measure(images: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"ink": (N,), "slant": (N,)} of images (N, C, H, W) in [-1, 1] (channels averaged)."""
    w = (images.float().mean(1) + 1) / 2  # (N, H, W) intensity in [0, 1]
    H, W = w.shape[1:]
    rows = torch.arange(H, dtype=w.dtype)[:, None].expand(H, W)
    cols = torch.arange(W, dtype=w.dtype)[None, :].expand(H, W)
    mass = w.sum((1, 2)).clamp_min(1e-8)
    r_bar, c_bar = (w * rows).sum((1, 2)) / mass, (w * cols).sum((1, 2)) / mass
    dr, dc = rows - r_bar[:, None, None], cols - c_bar[:, None, None]
    mu11, mu02 = (w * dr * dc).sum((1, 2)) / mass, (w * dr**2).sum((1, 2)) / mass
    return {"ink": w.mean((1, 2)), "slant": -mu11 / mu02.clamp_min(1e-8)}


def describe(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The prompt of each training image (N, PROMPT_LEN): its measured words (or pad in the middle third) and its class."""
    m, pad = measure(images), NUM_ATTRIBUTE_WORDS + num_classes
    tokens = torch.full((len(images), PROMPT_LEN), pad, dtype=torch.long)
    for k in range(num_classes):  # ink thirds within each class
        mine = labels == k
        if mine.sum() >= 3:
            lo, hi = torch.quantile(m["ink"][mine], torch.tensor([1 / 3, 2 / 3]))
            tokens[mine & (m["ink"] <= lo), 0], tokens[mine & (m["ink"] >= hi), 0] = 0, 1
    slanted = m["slant"] >= torch.quantile(m["slant"], 2 / 3)
    upright = (m["slant"].abs() <= torch.quantile(m["slant"].abs(), 1 / 3)) & ~slanted
    tokens[upright, 1], tokens[slanted, 1] = 2, 3
    tokens[:, -1] = labels + NUM_ATTRIBUTE_WORDS
    return tokens


def encode(prompts, vocab: list[str]) -> torch.Tensor:
    """Prompt text(s) -> token ids (B, PROMPT_LEN): each word in its slot, empty slots pad; "" is the empty prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    slot_of = {w: i for i, words in enumerate(SLOTS.values()) for w in words}
    out = torch.full((len(prompts), PROMPT_LEN), len(vocab), dtype=torch.long)
    for b, text in enumerate(prompts):
        for word in text.lower().split():
            if word not in vocab:
                raise ValueError(f"unknown word {word!r} in prompt {text!r}; the words are: {' '.join(vocab)}")
            slot = slot_of.get(word, PROMPT_LEN - 1)
            if out[b, slot] != len(vocab):
                raise ValueError(f"prompt {text!r} has two words for one slot ({vocab[out[b, slot]]!r} and {word!r})")
            out[b, slot] = vocab.index(word)
    return out


def decode(tokens: torch.Tensor, vocab: list[str]) -> list[str]:
    """Token ids (B, PROMPT_LEN) -> prompt texts (pads left out)."""
    return [" ".join(vocab[i] for i in row.tolist() if i < len(vocab)) for row in tokens]


def class_prompts(labels: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Prompts made of the class word alone, for labels (B,): what a prompt model (`num_classes` = `vocab_size`) is
    asked for a class."""
    tokens = torch.full((len(labels), PROMPT_LEN), vocab_size, dtype=torch.long, device=labels.device)
    tokens[:, -1] = labels + NUM_ATTRIBUTE_WORDS
    return tokens


def drop_words(tokens: torch.Tensor, p: float, pad: int, generator=None) -> torch.Tensor:
    """Each word replaced by pad with probability p: the model meets every subset of its words, so it learns each
    word's meaning alone and can be asked for combinations (Sec. 4 of notebook 12)."""
    if p == 0:
        return tokens
    gen_device = tokens.device if generator is None else generator.device
    drop = torch.rand(tokens.shape, generator=generator, device=gen_device).to(tokens.device) < p
    return torch.where(drop, torch.full_like(tokens, pad), tokens)
