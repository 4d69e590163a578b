"""Write ``mccl_core/models/resources/shipped_label_embeddings.npz``: the sentence embeddings
of the built-in demo's label texts (``description`` and ``name`` modes), shipped with the package.

Why: the encoder's last bits differ between CPUs, and training turns a last-bit difference in
the label queries into a visibly different model. With the vectors shipped, every machine
starts the demo from the same bits (and needs no encoder for it). Run again only when the
demo's class names or descriptions, or the encoder, change (the output is committed)::

    python tools/ship_label_embeddings.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mccl_core.data.demo import DEMO_INTENTS
from mccl_core.models.pki import SHIPPED_EMBEDDINGS, TEXT_ENCODER_NAME, _encode_texts, label_texts


def main() -> None:
    names = [i.name for i in DEMO_INTENTS]
    texts = label_texts(names, [i.description for i in DEMO_INTENTS]) + label_texts(names)
    embeddings = _encode_texts(texts)
    Path(SHIPPED_EMBEDDINGS).parent.mkdir(parents=True, exist_ok=True)
    np.savez(SHIPPED_EMBEDDINGS, texts=np.array(texts), embeddings=embeddings, encoder=np.array(TEXT_ENCODER_NAME))
    print(f"wrote {SHIPPED_EMBEDDINGS}: {len(texts)} texts x {embeddings.shape[1]}")


if __name__ == "__main__":
    main()
