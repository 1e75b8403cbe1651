"""The prompt catalogue and what each prompt asks the engine for."""

from __future__ import annotations

import pytest

from deepseek_ocr import PROMPTS, Task, resolve_prompt
from errors import InputError


@pytest.mark.parametrize(
    ("prompt", "task"),
    [
        (None, Task.DOCUMENT_GROUNDED),
        ("document", Task.DOCUMENT_GROUNDED),
        ("<image>\n<|grounding|>Convert the document to markdown. ", Task.DOCUMENT_GROUNDED),
        ("<image>\n<|grounding|>OCR this image.", Task.OCR_GROUNDED),
        ("<image>\nFree OCR.", Task.FREE_OCR),
        ("<image>\\nFree OCR.", Task.FREE_OCR),  # the escaped form SageMaker clients send
        ("markdown", Task.MARKDOWN),
        ("<image>Extract all text", Task.FREE_OCR),
        ("figure", Task.FIGURE),
        ("describe", Task.DESCRIBE),
        ("<image>\nWhat colour is the car?", Task.FREEFORM),
    ],
)
def test_classification(prompt, task):
    assert resolve_prompt(prompt).task == task


def test_image_token_added_and_escapes_unfolded():
    spec = resolve_prompt("Free OCR.")
    assert spec.prompt == "<image>\nFree OCR."
    assert resolve_prompt("<image>\\nFree OCR.").prompt == "<image>\nFree OCR."


def test_locate_needs_and_uses_a_target():
    spec = resolve_prompt("locate", target="Total")
    assert spec.task == Task.LOCATE and spec.target == "Total" and "<|ref|>Total<|/ref|>" in spec.prompt
    assert resolve_prompt(PROMPTS["locate"].format(target="x y")).target == "x y"
    with pytest.raises(InputError):
        resolve_prompt("locate")
