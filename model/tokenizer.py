"""Tokenizer wrapper over HF ``tokenizers``, loaded from a local folder only.

Exposes the ids the decoder and the engine need (mask, eos, pad, bos, the FIM sentinels) whatever the
folder's naming: our own tokenizers and Seed-Coder's use the same special-token strings.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

# Role -> candidate token strings, first match wins.
SPECIAL_NAMES: dict[str, tuple[str, ...]] = {
    "bos": ("<[begin▁of▁sentence]>", "<s>", "<|begin_of_text|>", "<|endoftext|>"),
    "pad": ("<[PAD▁TOKEN]>", "<pad>", "<|pad|>"),
    "eos": ("<[end▁of▁sentence]>", "</s>", "<|end_of_text|>", "<|endoftext|>"),
    "sep": ("<[SEP▁TOKEN]>",),
    "unk": ("<[UNK▁TOKEN]>", "<unk>"),
    "mask": ("<[MASK_TOKEN]>", "<|mask|>", "<mask>"),
    "fim_prefix": ("<[fim-prefix]>", "<fim_prefix>", "<|fim_prefix|>"),
    "fim_suffix": ("<[fim-suffix]>", "<fim_suffix>", "<|fim_suffix|>"),
    "fim_middle": ("<[fim-middle]>", "<fim_middle>", "<|fim_middle|>"),
    "system": ("<[system]>",),
    "user": ("<[user]>",),
    "assistant": ("<[assistant]>",),
}

# The order our own tokenizers are trained with (ids 0..N-1); mirrors Seed-Coder's first ids.
OWN_SPECIAL_TOKENS: list[str] = [
    "<[begin▁of▁sentence]>", "<[PAD▁TOKEN]>", "<[end▁of▁sentence]>", "<[SEP▁TOKEN]>", "<[UNK▁TOKEN]>",
    "<[MASK_TOKEN]>", "<[fim-prefix]>", "<[fim-suffix]>", "<[fim-middle]>",
    "<[system]>", "<[user]>", "<[assistant]>",
]


class TokenizerError(ValueError):
    pass


class Tokenizer:
    """Encode/decode plus the special ids. ``None`` for a role the vocabulary lacks."""

    def __init__(self, tok: HFTokenizer, chat_template: str | None = None, add_bos: bool | None = None) -> None:
        self.tok = tok
        self.chat_template = chat_template
        # Whether the folder's own files say a sequence starts with BOS (``add_bos_token`` in
        # tokenizer_config.json, else the tokenizer.json post-processor that ``AutoTokenizer`` applies);
        # None when they say nothing. See ``fim_bos``.
        self.add_bos = add_bos if add_bos is not None else _post_processor_adds_bos(tok)
        self.ids: dict[str, int | None] = {}
        for role, names in SPECIAL_NAMES.items():
            self.ids[role] = next((i for n in names if (i := tok.token_to_id(n)) is not None), None)
        self.vocab_size = tok.get_vocab_size()
        self.special_ids = {i for i in self.ids.values() if i is not None}

    # Ids by role.
    @property
    def mask_id(self) -> int | None:
        return self.ids["mask"]

    @property
    def eos_id(self) -> int | None:
        return self.ids["eos"]

    @property
    def pad_id(self) -> int | None:
        return self.ids["pad"]

    @property
    def bos_id(self) -> int | None:
        return self.ids["bos"]

    @property
    def fim_ids(self) -> tuple[int | None, int | None, int | None]:
        return self.ids["fim_prefix"], self.ids["fim_suffix"], self.ids["fim_middle"]

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise TokenizerError(f"no tokenizer.json in {folder}")
        try:
            tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers error types are not public
            raise TokenizerError(f"cannot read {path}: {e}") from e
        template, add_bos = None, None
        cfg = folder / "tokenizer_config.json"
        if cfg.is_file():
            try:
                d = json.loads(cfg.read_text(encoding="utf-8"))
                template, add_bos = d.get("chat_template"), d.get("add_bos_token")
            except (OSError, json.JSONDecodeError, AttributeError):
                template, add_bos = None, None
        jinja = folder / "chat_template.jinja"  # where newer folders (SDAR's) keep the template
        if not template and jinja.is_file():
            try:
                template = jinja.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                template = None
        return cls(tok, template, add_bos if isinstance(add_bos, bool) else None)

    @property
    def fim_bos(self) -> bool:
        """Whether a fill-in-the-middle prompt starts with BOS.

        Evidence (issue 15): the Seed-Coder report (section 2.2.6, in ../shared/research/papers) gives the FIM
        sample format as ``<[fim-suffix]>S<[fim-prefix]>P<[fim-middle]>M`` with no BOS, and Seed-Coder's own
        usage (the model card's FIM example, vLLM's /v1/completions) passes that string through the tokenizer
        with its default special-token handling, which adds BOS exactly when the folder's tokenizer files say
        so. So: what the files say (``add_bos``); with no word from them, the report's format (no BOS). Our
        own tokenizers say ``add_bos_token: true``: our trainer starts documents and half the FIM samples with
        BOS (training/fim.py), and its checkpoints were evaluated that way.
        """
        return bool(self.add_bos) and self.bos_id is not None

    def save(self, folder: str | Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.tok.save(str(folder / "tokenizer.json"))
        names = {role: self.tok.id_to_token(i) for role, i in self.ids.items() if i is not None}
        cfg = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": names.get("bos"), "eos_token": names.get("eos"), "pad_token": names.get("pad"),
            "unk_token": names.get("unk"), "mask_token": names.get("mask"),
            "model_max_length": 1_000_000,
        }
        if self.add_bos is not None:
            cfg["add_bos_token"] = self.add_bos
        if self.chat_template:
            cfg["chat_template"] = self.chat_template
        (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n",
                                                     encoding="utf-8")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special:
            ids = [i for i in ids if i not in self.special_ids]
        return self.tok.decode(ids, skip_special_tokens=False)

    def token_str(self, i: int) -> str:
        """Readable text of one token (for per-token displays)."""
        return self.tok.decode([int(i)], skip_special_tokens=False)

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of a chat ending with the assistant's turn open.

        Uses the folder's Jinja chat template when it has one (Seed-Coder, Stable-DiffCoder), else the
        Seed-Coder layout: ``<bos>role\\ncontent<eos>`` per turn, then ``<bos>assistant\\n``.
        """
        if self.chat_template:
            try:
                from jinja2.sandbox import ImmutableSandboxedEnvironment

                def raise_exception(message: str):
                    raise TokenizerError(message)

                # The environment transformers' apply_chat_template renders with, so templates read as published.
                env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
                env.globals["raise_exception"] = raise_exception
                text = env.from_string(self.chat_template).render(
                    messages=messages, add_generation_prompt=True,
                    bos_token=self.tok.id_to_token(self.bos_id) if self.bos_id is not None else "",
                    eos_token=self.tok.id_to_token(self.eos_id) if self.eos_id is not None else "")
                return self.tok.encode(text, add_special_tokens=False).ids
            except Exception:  # fall back to the built-in layout below
                pass
        if self.bos_id is None or self.eos_id is None:
            raise TokenizerError("chat prompts need bos and eos tokens")
        ids: list[int] = []
        for m in messages:
            ids += [self.bos_id] + self.encode(f"{m['role']}\n{m['content']}") + [self.eos_id]
        ids += [self.bos_id] + self.encode("assistant\n")
        return ids


def train_tokenizer(texts, vocab_size: int, min_frequency: int = 2) -> Tokenizer:
    """Train a byte-level BPE with our special tokens at ids 0..N-1 (bos 0, pad 1, eos 2, mask 5, FIM 6-8).

    ``texts`` is any iterable of strings. The chat template is the Seed-Coder layout.
    """
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=list(OWN_SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    template = ("{% for m in messages %}{{ bos_token }}{{ m['role'] }}\n{{ m['content'] }}{{ eos_token }}"
                "{% endfor %}{% if add_generation_prompt %}{{ bos_token }}assistant\n{% endif %}")
    return Tokenizer(tok, chat_template=template, add_bos=True)  # documents start with BOS (training/fim.py)


def _post_processor_adds_bos(tok: HFTokenizer) -> bool | None:
    """True/False when tokenizer.json has a template post-processor (it does / does not put a BOS first),
    else None."""
    try:  # the post-processor alone: serializing the whole tokenizer would copy its vocabulary
        post = json.loads(tok.post_processor.__getstate__()) if tok.post_processor is not None else None
    except (ValueError, AttributeError, TypeError):
        return None
    for proc in (post or {}).get("processors") or [post or {}]:
        if proc.get("type") == "TemplateProcessing":
            first = (proc.get("single") or [{}])[0]
            return (first.get("SpecialToken") or {}).get("id") in SPECIAL_NAMES["bos"]
    return None
