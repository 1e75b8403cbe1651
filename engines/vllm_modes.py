"""Every DeepSeek-OCR resolution mode on vLLM, per request, through vLLM's out-of-tree model registry.

vLLM 0.26's DeepSeek-OCR processor already builds the pixel tensors at the size a request asks for
(`mm_processor_kwargs` = {"base_size", "image_size", "crop_mode"} reach the HF processor), and the vision
encoders take any of those sizes with the same weights. Only the placeholder count is computed from the
built-in Gundam constants, so any other size fails with a placeholder mismatch. The subclasses here count
placeholders with the arguments the request's processor used (the same arithmetic as
process/image_process.plan_tiles). engines/vllm_register.py maps vLLM's DeepSeek-OCR architectures to
them: a vLLM general plugin (vllm_plugin/ declares the entry point, so `vllm serve` loads it in every
process), also called by the in-process engine. Importing this module needs vLLM (GPU machines only).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from transformers import BatchFeature
from vllm.model_executor.models.deepseek_ocr import (
    DeepseekOCRDummyInputsBuilder,
    DeepseekOCRForCausalLM,
    DeepseekOCRMultiModalProcessor,
    DeepseekOCRProcessingInfo,
)
from vllm.model_executor.models.deepseek_ocr2 import (
    DeepseekOCR2DummyInputsBuilder,
    DeepseekOCR2ForCausalLM,
    DeepseekOCR2MultiModalProcessor,
    DeepseekOCR2ProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageEmbeddingItems, ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement, PromptUpdate
from vllm.transformers_utils.processors.deepseek_ocr import (
    BASE_SIZE,
    CROP_MODE,
    IMAGE_SIZE,
    MIN_CROPS,
    count_tiles,
)

from engines import vllm_encoder, vllm_front_stats, vllm_pixels, vllm_views

PATCH_SIZE = 16
DOWNSAMPLE_RATIO = 4


def tile_grid(width: int, height: int, *, image_size: int, cropping: bool, max_crops: int) -> tuple[int, int]:
    """The tile grid (w, h) DeepseekOCRProcessor.tokenize_with_images puts in images_spatial_crop."""
    if cropping and (width > image_size or height > image_size):
        tiles_w, tiles_h = count_tiles(width, height, MIN_CROPS, max_crops, image_size=image_size)
        return int(tiles_w), int(tiles_h)
    return 1, 1


def image_token_count(
    width: int, height: int, *, base_size: int, image_size: int, cropping: bool, max_crops: int, strategy: str
) -> int:
    """Image tokens DeepseekOCRProcessor.tokenize_with_images emits for one image (v1: DeepSeek-OCR,
    v2: DeepSeek-OCR-2). Must equal the processor's own expansion, or vLLM reports a placeholder mismatch."""
    tiles_w, tiles_h = tile_grid(width, height, image_size=image_size, cropping=cropping, max_crops=max_crops)
    q_base = math.ceil(base_size // PATCH_SIZE / DOWNSAMPLE_RATIO)
    q_tile = math.ceil(image_size // PATCH_SIZE / DOWNSAMPLE_RATIO)
    tokens = (q_base * (q_base + 1) if strategy == "v1" else q_base * q_base) + 1
    if tiles_w > 1 or tiles_h > 1:
        row = q_tile * tiles_w + 1 if strategy == "v1" else q_tile * tiles_w
        tokens += row * q_tile * tiles_h
    return tokens


class _ModeAwareUpdates:
    """Mixin for the multimodal processors: placeholders sized by the request's processor arguments."""

    def _get_prompt_updates(
        self, mm_items, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs
    ) -> Sequence[PromptUpdate]:
        hf_processor = self.info.get_hf_processor(**hf_processor_mm_kwargs)  # type: ignore[attr-defined]
        image_token_id = hf_processor.image_token_id
        cropping = bool(hf_processor_mm_kwargs.get("crop_mode", CROP_MODE))

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", (ImageEmbeddingItems, ImageProcessorItems))
            if isinstance(images, ImageEmbeddingItems):
                return [image_token_id] * images.get_feature_size(item_idx)
            size = images.get_image_size(item_idx)
            count = image_token_count(
                size.width, size.height, base_size=hf_processor.base_size, image_size=hf_processor.image_size,
                cropping=cropping, max_crops=hf_processor.max_crops, strategy=hf_processor.strategy,
            )  # fmt: skip
            return [image_token_id] * count

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]

    def _call_hf_processor(self, prompt, mm_data, mm_kwargs, tok_kwargs):
        outputs = super()._call_hf_processor(prompt, mm_data, mm_kwargs, tok_kwargs)  # type: ignore[misc]
        if "pixel_values" in outputs:
            # Each image's tile size: when modes share an engine step, vLLM pads every tile to the largest.
            size = self.info.get_hf_processor(**mm_kwargs).image_size  # type: ignore[attr-defined]
            outputs["tile_size"] = torch.full((outputs["pixel_values"].shape[0],), size, dtype=torch.long)
            if vllm_pixels.enabled():
                vllm_pixels.uint8_empties(outputs)
        return outputs

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))  # type: ignore[misc]
        # Read on the host each step (vllm_encoder.mixed): kept on the CPU, so reading it costs no device sync.
        # (The tile grids stay on the GPU: keeping them on the CPU too removes vLLM's per-image syncs, but twelve
        # service passes each way on two H100s measured the same pages/s, bench/RESULTS.md, fourteenth session.)
        return {**fields, "tile_size": MultiModalFieldConfig.batched("image", keep_on_cpu=True)}


def pages_without_views(processor, prompt: str, images: Sequence, cropping: bool) -> BatchFeature:
    """DEVICE_VIEWS (engines/vllm_views.py): what DeepseekOCRProcessor returns for `prompt` and `images`, but with
    each page's uint8 pixels and its view plan where the processor would cut and resize the views in Pillow.
    The token ids repeat tokenize_with_images: bos, then each text piece and the image's tokens, then the last
    piece (the processor's eos is cut off again)."""
    texts = prompt.split(processor.image_token)
    if len(texts) != len(images) + 1:
        raise ValueError(f"{len(texts) - 1} image placeholders for {len(images)} images")
    size, base, crops = processor.image_size, processor.base_size, processor.max_crops
    ids, grids = [processor.bos_id], []
    for text, image in zip(texts, images, strict=False):
        width, height = vllm_views.page_size(image)
        ids += processor.encode(text, bos=False, eos=False)
        count = image_token_count(width, height, base_size=base, image_size=size, cropping=cropping,
                                  max_crops=crops, strategy=processor.strategy)  # fmt: skip
        ids += [processor.image_token_id] * count
        grids.append(tile_grid(width, height, image_size=size, cropping=cropping, max_crops=crops))
    ids += processor.encode(texts[-1], bos=False, eos=False)
    pages = [vllm_views.page_tensor(image) for image in images]
    n = len(pages)
    if n == 1:
        stacked: torch.Tensor | list[torch.Tensor] = pages[0][None]  # no copy
    else:
        stacked = torch.stack(pages) if len({p.shape for p in pages}) == 1 else pages
    return BatchFeature({
        "input_ids": torch.tensor([ids], dtype=torch.long),
        vllm_views.PAGE: stacked,
        vllm_views.PLAN: torch.tensor([[base, size, int(cropping)]] * n, dtype=torch.long),
        "images_spatial_crop": torch.tensor(grids, dtype=torch.long).reshape(n, 2),
        "tile_size": torch.full((n,), size, dtype=torch.long),
    })  # fmt: skip


class _Uint8Views:
    """Mixin for the processing infos: with UINT8_PIXELS the HF processor emits uint8 views
    (engines/vllm_pixels.py); the model classes below normalise them on the GPU."""

    def get_hf_processor(self, **kwargs: object):
        processor = super().get_hf_processor(**kwargs)  # type: ignore[misc]
        transform = processor.image_transform
        if vllm_pixels.enabled() and vllm_pixels.swappable(transform):
            processor.image_transform = vllm_pixels.Uint8Transform(transform)  # vLLM caches the processor: once
        return processor


class OCRInfo(_Uint8Views, DeepseekOCRProcessingInfo):
    pass


class OCR2Info(_Uint8Views, DeepseekOCR2ProcessingInfo):
    pass


class ModeAwareOCRProcessor(_ModeAwareUpdates, DeepseekOCRMultiModalProcessor):
    def _call_hf_processor(self, prompt, mm_data, mm_kwargs, tok_kwargs):
        if not (vllm_views.enabled() and mm_data.get("images")):
            return super()._call_hf_processor(prompt, mm_data, mm_kwargs, tok_kwargs)
        processor = self.info.get_hf_processor(**mm_kwargs)
        out = pages_without_views(processor, prompt, mm_data["images"], bool(mm_kwargs.get("crop_mode", CROP_MODE)))
        vllm_front_stats.observe_prep(mm_data["images"])
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        if vllm_views.PAGE not in hf_inputs:
            return fields
        return {**fields, vllm_views.PAGE: MultiModalFieldConfig.batched("image"),
                vllm_views.PLAN: MultiModalFieldConfig.batched("image", keep_on_cpu=True)}  # fmt: skip


class ModeAwareOCR2Processor(_ModeAwareUpdates, DeepseekOCR2MultiModalProcessor):
    pass


EAGER_TOKENS = 1 << 40
EAGER_IMAGE = "eager_image"  # marks a one-image batch of a step that the encoder graphs cannot take


def _graph_sized(mm_kwargs: Mapping[str, object]) -> bool:
    return vllm_encoder.sized(mm_kwargs, BASE_SIZE, IMAGE_SIZE)


@MULTIMODAL_REGISTRY.register_processor(ModeAwareOCRProcessor, info=OCRInfo, dummy_inputs=DeepseekOCRDummyInputsBuilder)
class DeepseekOCRModesForCausalLM(DeepseekOCRForCausalLM):
    """vLLM's DeepSeek-OCR with every resolution mode; with BATCHED_ENCODER=1 the vision encoder runs over the
    whole step at once (engines/vllm_encoder.py; opt-in: 0.95x vLLM's per-image loop on an H100, see
    bench/RESULTS.md). With ENCODER_CUDAGRAPH, vLLM's encoder CUDA graphs run Gundam-sized steps."""

    def embed_multimodal(self, **kwargs: object):
        kwargs = vllm_pixels.normalise_inputs(vllm_views.expand(kwargs), self.view_seperator.dtype)
        tile_sizes = kwargs.pop("tile_size", None)
        pixel_values, crops, grids = (kwargs.get(k) for k in ("pixel_values", "images_crop", "images_spatial_crop"))
        if pixel_values is None or crops is None or grids is None:
            return super().embed_multimodal(**kwargs)
        # Modes mixed in one step arrive as lists / padded tiles that vLLM's loop cannot take: ours can.
        batched = os.environ.get("BATCHED_ENCODER", "0") == "1"
        if not batched and not vllm_encoder.mixed(pixel_values, crops, grids, tile_sizes):  # type: ignore[arg-type]
            return super().embed_multimodal(**kwargs)
        items = vllm_encoder.split_items(pixel_values, crops, grids, tile_sizes)  # type: ignore[arg-type]
        return vllm_encoder.encode(self, items) if items else None

    # vLLM's encoder CUDA graphs (ENCODER_CUDAGRAPH) are captured for Gundam's views (1024-px global, 640-px
    # tiles); untiled 1024-px views (Base) fit them too. A step with other sizes runs eagerly, image by image,
    # through the manager's "global path eager" branch: each image's global size is larger than any graph
    # budget (so it is alone in its batch) and its local size 0; the eager forward then returns the image's
    # whole embedding and postprocess hands it over as is. (The manager's all-eager branch cannot be used: it
    # indexes its per-batch token list by the image's index in the step.)

    def get_encoder_cudagraph_item_specs(self, mm_kwargs):
        vllm_views.expand(mm_kwargs)  # the manager asks this first; its later calls see the views
        specs = super().get_encoder_cudagraph_item_specs(mm_kwargs)
        if _graph_sized(mm_kwargs):
            return specs
        big = EAGER_TOKENS
        return [replace(s, input_size=big, output_tokens=big, global_output_tokens=big, local_output_tokens=0)
                for s in specs]  # fmt: skip

    def select_encoder_cudagraph_items(self, mm_kwargs, indices):
        vllm_views.expand(mm_kwargs)
        if _graph_sized(mm_kwargs):
            selected = super().select_encoder_cudagraph_items(mm_kwargs, indices)
        else:  # one image (see above), from lists or padded tiles
            (i,) = indices
            grids = mm_kwargs["images_spatial_crop"]
            item = vllm_encoder.split_items(
                mm_kwargs["pixel_values"], mm_kwargs["images_crop"], grids, mm_kwargs.get("tile_size")
            )[i]
            grid = grids[i : i + 1] if isinstance(grids, torch.Tensor) else torch.as_tensor(grids[i]).reshape(1, 2)
            selected = {"pixel_values": item.view[None], "images_crop": item.tiles, "images_spatial_crop": grid,
                        EAGER_IMAGE: i}  # fmt: skip
        return vllm_pixels.normalise_inputs(selected, self.view_seperator.dtype)

    def encoder_eager_forward(self, mm_kwargs, path: str = "default"):
        if EAGER_IMAGE in mm_kwargs:  # the image's whole embedding, whichever path the manager asks for
            return super().encoder_eager_forward({k: v for k, v in mm_kwargs.items() if k != EAGER_IMAGE})
        return super().encoder_eager_forward(mm_kwargs, path)

    def postprocess_encoder_output(self, output, indices, per_item_out_tokens, dest, clone=False,
                                   batch_mm_kwargs=None, local_output=None):  # fmt: skip
        if batch_mm_kwargs is not None and EAGER_IMAGE in batch_mm_kwargs:
            dest[batch_mm_kwargs[EAGER_IMAGE]] = output.clone() if clone else output
            return
        super().postprocess_encoder_output(
            output, indices, per_item_out_tokens, dest, clone=clone, batch_mm_kwargs=batch_mm_kwargs,
            local_output=local_output,
        )  # fmt: skip


@MULTIMODAL_REGISTRY.register_processor(
    ModeAwareOCR2Processor, info=OCR2Info, dummy_inputs=DeepseekOCR2DummyInputsBuilder
)
class DeepseekOCR2ModesForCausalLM(DeepseekOCR2ForCausalLM):
    """vLLM's DeepSeek-OCR-2 with crop mode on or off per request."""

    def embed_multimodal(self, **kwargs: object):
        kwargs.pop("tile_size", None)  # OCR-2's modes share one tile size
        return super().embed_multimodal(**vllm_pixels.normalise_inputs(kwargs, self.view_seperator.dtype))
