"""Names shared across the pipeline: LUNA16's CSV columns and the keys of a training batch.

Coordinates are world millimetres ``(x, y, z)`` in ``coordX, coordY, coordZ``, as in every LUNA16 file.
"""

from __future__ import annotations

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]
POINT_COLUMNS = ["seriesuid", *COORD_COLUMNS]
# annotations.csv: one row per nodule >= 3 mm.
ANNOTATION_COLUMNS = [*POINT_COLUMNS, "diameter_mm"]
# Optional in a table of points: how messages name each row in its file when spreadsheet row numbers (index + 2)
# would be wrong (a detector's JSON: "entry 1, box 0").
ROW_NAME_COLUMN = "row_name"
# candidates_V2.csv: detector candidates, class 1 = nodule.
CANDIDATE_COLUMNS = [*POINT_COLUMNS, "class"]
# annotations_with_malignancy.csv: annotations with the LIDC readers' malignancy (mal_bool: mean rating > 3).
MALIGNANCY_COLUMNS = [
    *ANNOTATION_COLUMNS,
    "mal_bool",
    "mal_details",
    "bboxLowX",
    "bboxLowY",
    "bboxLowZ",
    "bboxHighX",
    "bboxHighY",
    "bboxHighZ",
    "len_mal_details",
]
# The demo data's malignancy CSV adds, after the release's columns, the LIDC readers' ratings that lidc-crops'
# points.csv has, under its names (lungexp.data.synthetic.nodules.reader_ratings): a target's columns.
DEMO_RATING_COLUMNS = ["malignancy", "texture", "spiculation", "calcification"]

# LIDC readers' ratings and the labels made from them (``mal_bool``, ``class``, ``label``): known only once a
# radiologist has read the scan, and ``malignancy`` is the label itself, so never a model's input by default
# (``model.covariates``, :mod:`lungexp.data.labels.covariates`).
NOT_COVARIATES = ("malignancy", "texture", "spiculation", "calcification", "subtlety", "internalStructure",
                  "lobulation", "margin", "sphericity", "label", "mal_bool", "mal_details", "len_mal_details", "class")

# A batch from PatchDataset: the normalised patch, its 0/1 label and its row in the patch cache; with
# ``model.covariates``, also the sample's covariates (B, k) as read from the labels CSV (unstandardised).
IMAGE_KEY = "image"
LABEL_KEY = "label"
INDEX_KEY = "index"
COVARIATES_KEY = "covariates"
