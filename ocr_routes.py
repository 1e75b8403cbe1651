"""Advanced image OCR: boxes, annotated image, region crops, tiling. Mounted under /ocr."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile

import ocr_utils
import pipeline
from deepseek_ocr import PROMPTS
from process.image_process import MODES

PREFIX = "/ocr"
router = APIRouter(prefix=PREFIX, tags=["image OCR"])


def _labels(value: str | None) -> set[str] | None:
    """'image,table' -> {'image','table'}; 'all' -> None (every region)."""
    v = (value or "image").strip().lower()
    return None if v in ("all", "*") else {x.strip() for x in v.split(",") if x.strip()}


def page_payload(
    page: pipeline.PageResult, model_name: str, *, draw_boxes: bool, crop_labels: set[str] | bool | None
) -> dict:
    """The full per-image answer (also used per page by the PDF and batch routers)."""
    annotated = None
    if draw_boxes and page.regions:
        annotated = ocr_utils.b64(ocr_utils.encode_image(ocr_utils.draw_boxes(page.image, page.regions), "PNG"))
    crops = []
    if crop_labels is not False:
        for region, img in ocr_utils.crop_regions(page.image, page.regions, crop_labels or None):
            crops.append(
                {
                    "name": region.crop_name,
                    "index": region.index,
                    "label": region.label,
                    "box_px": region.box_px,
                    "image_base64": ocr_utils.b64(ocr_utils.encode_image(img, "JPEG")),
                }
            )
    return {
        "text": page.text,
        "markdown": page.markdown,
        "regions": [r.as_dict() for r in page.regions],
        "annotated_image": annotated,
        "crops": crops,
        **page.seed_fields(model_name),
        "task": page.spec.task.value,
        "mode": page.mode,
        "tiles": page.plan,
        "repetition_collapsed": page.repetition_collapsed,
        "warnings": page.warnings,
        "input": page.image_info,
        "usage": page.usage(),
    }


@router.post("/image/advanced")
async def image_advanced(
    request: Request,
    file: Annotated[UploadFile | None, File(description="the image (or give image_url / image_base64)")] = None,
    image_url: Annotated[str | None, Form()] = None,
    image_base64: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form(description="catalogue name (" + ", ".join(PROMPTS) + ") or text")] = None,
    mode: Annotated[str | None, Form(description="resolution mode: " + ", ".join(MODES))] = None,
    draw_boxes: Annotated[bool, Form()] = True,
    crop_regions: Annotated[bool, Form()] = True,
    crop_labels: Annotated[str | None, Form(description="labels to crop, comma-separated, or 'all'")] = "image",
    crop_mode: Annotated[Literal["singlepage", "tiling"], Form()] = "singlepage",
    max_tokens: Annotated[int | None, Form(ge=1, le=32768)] = None,
    temperature: Annotated[float, Form(ge=0.0, le=2.0)] = 0.0,
    target: Annotated[str | None, Form(description="text to find, for the 'locate' prompt")] = None,
) -> dict:
    """Full image OCR: text, Markdown, raw output, regions with boxes, annotated image and crops (base64)."""
    settings = pipeline.settings_of(request)
    engine = pipeline.engine_of(request)
    data = await pipeline.image_bytes(settings, file, image_url, image_base64)
    page = await pipeline.ocr_image_bytes(
        engine,
        settings,
        data,
        prompt,
        mode=mode,
        max_tokens=max_tokens,
        temperature=temperature,
        target=target,
        tiling=crop_mode == "tiling",
    )
    labels = _labels(crop_labels) if crop_regions else False
    body = await asyncio.to_thread(page_payload, page, engine.model_name, draw_boxes=draw_boxes, crop_labels=labels)
    return {"success": True, "engine": engine.name, "crop_mode": crop_mode, **body}


@router.post("/image/simple")
async def image_simple(
    request: Request,
    file: Annotated[UploadFile | None, File()] = None,
    image_url: Annotated[str | None, Form()] = None,
    image_base64: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = "free",
) -> dict:
    """Quick text extraction: just the text (Free OCR by default)."""
    settings = pipeline.settings_of(request)
    engine = pipeline.engine_of(request)
    data = await pipeline.image_bytes(settings, file, image_url, image_base64)
    page = await pipeline.ocr_image_bytes(engine, settings, data, prompt)
    usage = page.usage()
    return {"success": True, "text": page.text, "image_size": page.size, "usage": usage, "warnings": page.warnings}


@router.get("/status")
async def status(request: Request) -> dict:
    engine = pipeline.engine_of(request)
    return {"router": "ocr", "available": True, "engine": engine.info()}


@router.get("/info")
async def info(request: Request) -> dict:
    engine = pipeline.engine_of(request)
    return {
        "endpoints": {
            "POST /ocr/image/advanced": "file | image_url | image_base64; prompt, mode, draw_boxes, crop_regions, "
            "crop_labels, crop_mode (singlepage|tiling), max_tokens, temperature, target",
            "POST /ocr/image/simple": "file | image_url | image_base64; prompt (default 'free')",
        },
        "prompts": PROMPTS,
        "modes": {
            k: {"base_size": m.base_size, "image_size": m.image_size, "crop_mode": m.crop_mode}
            for k, m in engine.modes.items()
        },
        "default_mode": engine.default_mode(),
        "box_format": "regions[].box_norm is [x1,y1,x2,y2] in 0-999 of the image; box_px is the same in pixels",
    }
