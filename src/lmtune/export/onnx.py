"""ONNX export of encoders (fill-mask, classification) through PyTorch's own exporter (`torch.onnx`),
checked against PyTorch with ONNX Runtime before the folder is published. (optimum's exporter pins
transformers 4.x, which lmtune does not run on.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lmtune.errors import LmtuneError
from lmtune.infer import load
from lmtune.tasks import Objective

TOLERANCE = 1e-3  # largest difference allowed between ONNX Runtime's and PyTorch's fp32 logits
CHECK_TEXTS = ["The quick brown fox jumps over the lazy dog.", "A second, shorter sentence."]


class _Logits(torch.nn.Module):
    """The model as ONNX sees it: token ids and attention mask in, logits out."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def _require() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise LmtuneError(f"ONNX export needs {module}: pip install 'lmtune[onnx]'") from None


def export_onnx(model_dir: Path, objective: Objective, folder: Path) -> dict:
    """`model.onnx` with the tokenizer and config.json (label names) beside it; returns what the card shows."""
    _require()
    import onnxruntime

    loaded = load(str(model_dir), objective.name, device="cpu", dtype="fp32")
    model = loaded.model.float().eval()
    enc = loaded.tokenizer(CHECK_TEXTS, return_tensors="pt", padding=True)
    inputs = (enc["input_ids"], enc["attention_mask"])
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    path = folder / "model.onnx"
    try:
        torch.onnx.export(
            _Logits(model),
            inputs,
            str(path),
            input_names=["input_ids", "attention_mask"],
            output_names=["logits"],
            dynamo=True,
            optimize=True,
            external_data=False,
            dynamic_shapes={"input_ids": {0: batch, 1: sequence}, "attention_mask": {0: batch, 1: sequence}},
        )
    except Exception as err:
        raise LmtuneError(f"torch.onnx could not export this model: {str(err).splitlines()[0]}") from None
    loaded.tokenizer.save_pretrained(folder)
    model.config.save_pretrained(folder)
    # Checked on other shapes than the exported example: the dynamic axes must really be dynamic.
    check = loaded.tokenizer(CHECK_TEXTS[:1] * 3, return_tensors="pt", padding=True)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(
        None, {"input_ids": check["input_ids"].numpy(), "attention_mask": check["attention_mask"].numpy()}
    )[0]
    with torch.no_grad():
        want = model(input_ids=check["input_ids"], attention_mask=check["attention_mask"]).logits.numpy()
    difference = float(np.abs(got - want).max())
    if difference > TOLERANCE:
        raise LmtuneError(
            f"the ONNX model's logits differ from PyTorch's by {difference:.2g} (> {TOLERANCE}); not exporting it"
        )
    return {"onnx_max_abs_difference": difference}
