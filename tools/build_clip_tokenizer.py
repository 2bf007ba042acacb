"""Rebuild modules/clip_tokenizer/{vocab.json,merges.txt} from the CLIP BPE table.

The table ships in the PyPI wheel ``clip-anytorch`` (``clip/bpe_simple_vocab_16e6.txt.gz``);
install it with ``pip install --no-deps clip-anytorch`` and run this script. The derivation is
deterministic: merges are lines 1..48894 of the table; the vocabulary is the 256 byte symbols,
the same with ``</w>``, every merge joined, then the two special tokens (49,408 entries).
"""
import gzip
import importlib.util
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "modules" / "clip_tokenizer"
MERGE_COUNT = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """The GPT-2/CLIP reversible byte-to-unicode table, in its canonical order."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main() -> None:
    spec = importlib.util.find_spec("clip")
    table = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(table, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : MERGE_COUNT + 1]]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    print(f"wrote {len(vocab)} tokens and {len(merges)} merges to {OUT}")


if __name__ == "__main__":
    main()
