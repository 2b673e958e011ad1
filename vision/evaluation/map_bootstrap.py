"""COCO mAP on a resampled image multiset, cheaply, for the paired bootstrap (``quant_common.uncertainty``).

pycocotools matches detections to ground truth per (image, category) in ``COCOeval.evaluate()`` and only then
pools the images in ``accumulate()``. A bootstrap resample is a multiset of images, so the per-image matching is
done once and each resample re-runs only the pooling -- with every detection weighted by how often its image was
drawn instead of copying it. That is exact, not an approximation: with the multiset's images in id order,
pycocotools would sort the copies of a detection next to each other (``mergesort`` keeps ties in image order), so
they add to the cumulative true/false positive counts in one step; the precision points they skip are interior
to a run of equal recall (a false positive) or of rising precision (a true positive), which the precision
envelope and the left-sided recall lookup never read. (The one exception is two detections of one image and
category with the very same score, which pycocotools orders by input position anyway; a detector's float scores
practically never tie so.) ``tests/vision/evaluation/test_map_bootstrap.py`` checks it against
``COCOeval.accumulate`` on resampled ``evalImgs``.

Only what ``vision.evaluation.evaluate`` reports is kept: area ``all``, the largest ``maxDets``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from quant_common.errors import QuantError
from quant_common.uncertainty import (
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    Estimate,
    from_replicates,
    resample_counts,
)

_EPS = np.spacing(1)  # pycocotools' precision denominator guard


@dataclass
class CategoryMatches:
    """One category's detections over all images, sorted as pycocotools sorts them (score, then image order),
    cut after the last one that is a true positive at any IoU threshold (later ones cannot change precision), in
    runs: consecutive detections with the same outcome at every IoU threshold pool like copies of one detection
    (the argument in the module docstring), so a run is one precision point weighted by its members' draws --
    ~10x fewer points than detections on the bundled detector's val images."""

    image: np.ndarray  # [N] position of each detection's image in ``ImageMatches.image_ids``
    starts: np.ndarray  # [S] index of each run's first detection
    tp: np.ndarray  # [T, S] float 0/1: the run's detections are matched, not ignored, at IoU threshold t
    fp: np.ndarray  # [T, S] float 0/1: unmatched, not ignored
    gt: np.ndarray  # [I] ground-truth boxes per image that count (not ignored)


@dataclass
class ImageMatches:
    """The per-image COCO matching of one model's detections, ready to be pooled over any image multiset."""

    image_ids: list[int]
    categories: list[CategoryMatches]  # categories without any ground truth are left out (pycocotools: -1)
    rec_thrs: np.ndarray  # [R]
    iou_thrs: np.ndarray  # [T]
    cache: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_evaluator(cls, evaluator: Any, image_ids: list[int]) -> ImageMatches:
        """From a ``COCOeval`` after ``evaluate()`` whose ``params.imgIds`` are ``image_ids``."""
        params = evaluator.params
        if list(params.imgIds) != list(image_ids):
            raise QuantError("the COCO evaluation was run on other images than the ones given",
                             "pass the image ids the evaluator was given")
        n_img, n_area = len(image_ids), len(params.areaRng)
        max_det = params.maxDets[-1]
        categories = []
        for k in range(len(params.catIds)):
            base = k * n_area * n_img  # area 'all' is index 0 (pycocotools' default areaRng order)
            entries = [(pos, e) for pos in range(n_img) if (e := evaluator.evalImgs[base + pos]) is not None]
            matches = _category(entries, n_img, len(params.iouThrs), max_det)
            if matches is not None:
                categories.append(matches)
        return cls(list(image_ids), categories, np.asarray(params.recThrs, np.float64),
                   np.asarray(params.iouThrs, np.float64))

    @classmethod
    def without_detections(cls, coco: Any, image_ids: list[int], iou_thrs: np.ndarray | None = None,
                           rec_thrs: np.ndarray | None = None) -> ImageMatches:
        """A model that found nothing: AP 0 in every category that has ground truth on these images."""
        t = np.linspace(0.5, 0.95, 10) if iou_thrs is None else iou_thrs
        r = np.linspace(0.0, 1.0, 101) if rec_thrs is None else rec_thrs
        position = {image_id: i for i, image_id in enumerate(image_ids)}
        counts: dict[int, np.ndarray] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_ids)):
            if not (ann.get("iscrowd", 0) or ann.get("ignore", 0)):
                counts.setdefault(ann["category_id"], np.zeros(len(image_ids), np.int64))[position[ann["image_id"]]] += 1
        empty = np.zeros((len(t), 0))
        none = np.zeros(0, np.int64)
        return cls(list(image_ids), [CategoryMatches(none, none, empty, empty, gt)
                                     for _, gt in sorted(counts.items())], r, t)

    def map(self, counts: np.ndarray) -> np.ndarray:
        """``[B, 2]`` (mAP50-95, mAP50) of each row of image counts ``[B, I]`` (all ones: the data as measured)."""
        counts = np.atleast_2d(np.asarray(counts, np.float64))
        if counts.shape[1] != len(self.image_ids):
            raise QuantError(f"{counts.shape[1]} image counts for {len(self.image_ids)} images",
                             "resample the images this model was evaluated on")
        if not self.categories:
            return np.zeros((len(counts), 2))
        aps = np.stack([_average_precision(c, counts, self.rec_thrs) for c in self.categories], axis=1)  # [B, K, T]
        drawn = ~np.isnan(aps[:, :, 0])  # categories with ground truth in the resample
        with np.errstate(invalid="ignore"):
            per_class = np.where(drawn[:, :, None], aps, 0.0)
            n = np.maximum(drawn.sum(axis=1), 1)
            return np.stack([per_class.mean(axis=2).sum(axis=1) / n, per_class[:, :, 0].sum(axis=1) / n], axis=1)


def _average_precision(cat: CategoryMatches, counts: np.ndarray, rec_thrs: np.ndarray,
                       max_elements: int = 1 << 21) -> np.ndarray:
    """``[B, T]`` precision averaged over the recall thresholds for each row of image counts; NaN where the row
    drew no ground truth of the category. Rows are processed in chunks of at most ``max_elements`` values."""
    positives = counts @ cat.gt  # [B]
    n_thr, n = cat.tp.shape
    out = np.full((len(counts), n_thr), np.nan)
    has = positives > 0
    if n == 0:
        out[has] = 0.0
        return out
    step = max(1, max_elements // (n_thr * n))
    for start in range(0, len(counts), step):
        rows = slice(start, start + step)
        out[rows] = _chunk_precision(cat, counts[rows], positives[rows], rec_thrs)
    out[~has] = np.nan
    return out


def _chunk_precision(cat: CategoryMatches, counts: np.ndarray, positives: np.ndarray,
                     rec_thrs: np.ndarray) -> np.ndarray:
    n_thr, n = cat.tp.shape
    b = len(counts)
    # each detection weighted by how often its image was drawn, summed over its run
    drawn = np.add.reduceat(counts[:, cat.image], cat.starts, axis=1)  # [b, S]
    tp = np.cumsum(cat.tp[None] * drawn[:, None], axis=2)  # [b, T, S], whole numbers
    fp = np.cumsum(cat.fp[None] * drawn[:, None], axis=2)
    precision = tp / (tp + fp + _EPS)
    envelope = np.maximum.accumulate(precision[:, :, ::-1], axis=2)[:, :, ::-1]
    # pycocotools: the first detection whose float recall tp / positives reaches each threshold. Recall takes the
    # values j / positives, so find the least whole j whose float quotient reaches it (as pycocotools compares),
    # then the first detection with tp >= j: a search over whole numbers, exact with rows shifted apart.
    safe = np.maximum(positives, 1.0)[:, None]
    need = np.ceil(rec_thrs[None, :] * safe)  # [b, R]
    need = np.where(need / safe < rec_thrs[None, :], need + 1, need)
    need = np.where((need > 0) & ((need - 1) / safe >= rec_thrs[None, :]), need - 1, need)
    shift = (tp.max() + 2.0) * np.arange(b * n_thr, dtype=np.float64).reshape(b, n_thr, 1)
    found = np.searchsorted((tp + shift).ravel(), (need[:, None, :] + shift).ravel(), side="left")
    found = found.reshape(b, n_thr, -1) - n * np.arange(b * n_thr).reshape(b, n_thr, 1)
    picked = np.take_along_axis(envelope, np.minimum(found, n - 1), axis=2)
    return np.where(found < n, picked, 0.0).mean(axis=2)


def _category(entries: list[tuple[int, dict[str, Any]]], n_img: int, n_thr: int,
              max_det: int) -> CategoryMatches | None:
    gt = np.zeros(n_img, np.int64)
    for pos, e in entries:
        gt[pos] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
    if not gt.any():
        return None  # pycocotools leaves this category out of the mean (precision -1) on every multiset
    parts = [(pos, e) for pos, e in entries if len(e["dtScores"][:max_det])]
    if not parts:
        empty = np.zeros((n_thr, 0))
        return CategoryMatches(np.zeros(0, np.int64), np.zeros(0, np.int64), empty, empty, gt)
    scores = np.concatenate([np.asarray(e["dtScores"][:max_det], np.float64) for _, e in parts])
    image = np.concatenate([np.full(len(e["dtScores"][:max_det]), pos, np.int64) for pos, e in parts])
    matched = np.concatenate([np.asarray(e["dtMatches"])[:, :max_det] for _, e in parts], axis=1) != 0
    ignored = np.concatenate([np.asarray(e["dtIgnore"])[:, :max_det] for _, e in parts], axis=1) != 0
    order = np.argsort(-scores, kind="mergesort")
    image, matched, ignored = image[order], matched[:, order], ignored[:, order]
    tp, fp = matched & ~ignored, ~matched & ~ignored
    hits = np.flatnonzero(tp.any(axis=0))
    keep = int(hits[-1]) + 1 if hits.size else 1  # after the last true positive precision only falls
    tp, fp = tp[:, :keep], fp[:, :keep]
    outcome = tp.astype(np.int8) + 2 * fp.astype(np.int8)  # [T, N]: 1 matched, 2 unmatched, 0 ignored
    starts = np.flatnonzero(np.r_[True, np.any(outcome[:, 1:] != outcome[:, :-1], axis=0)])
    return CategoryMatches(image[:keep], starts, tp[:, starts].astype(np.float64), fp[:, starts].astype(np.float64),
                           gt)


def replicates(matches: ImageMatches, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """``[resamples, 2]`` (mAP50-95, mAP50) on seeded image resamples. The resamples depend only on the image count,
    ``resamples`` and ``seed``, so two models evaluated on the same images share them (a paired bootstrap); each
    model's replicates are computed once and kept on it (a reference is compared with many candidates)."""
    key = (resamples, seed)
    if key not in matches.cache:
        counts = resample_counts(len(matches.image_ids), resamples, seed)
        matches.cache[key] = matches.map(counts)
    return matches.cache[key]


def map_estimates(matches: ImageMatches, *, resamples: int = DEFAULT_RESAMPLES,
                  seed: int = DEFAULT_SEED) -> tuple[Estimate, Estimate]:
    """(mAP50-95, mAP50) with their 95 % intervals over images."""
    point = matches.map(np.ones(len(matches.image_ids)))[0]
    reps = replicates(matches, resamples, seed)
    units = len(matches.image_ids)
    return from_replicates(point[0], reps[:, 0], units, seed), from_replicates(point[1], reps[:, 1], units, seed)


def paired_map_deltas(reference: ImageMatches, candidate: ImageMatches, *, resamples: int = DEFAULT_RESAMPLES,
                      seed: int = DEFAULT_SEED) -> tuple[Estimate, Estimate]:
    """Candidate minus reference (mAP50-95, mAP50) in mAP points (x100), with paired 95 % intervals: both models
    pooled over the same resampled images."""
    if reference.image_ids != candidate.image_ids:
        raise QuantError("the two models were evaluated on different images",
                         "evaluate both on the same --data, --annotations and --max-images")
    ones = np.ones(len(reference.image_ids))
    point = 100.0 * (candidate.map(ones)[0] - reference.map(ones)[0])
    reps = 100.0 * (replicates(candidate, resamples, seed) - replicates(reference, resamples, seed))
    units = len(reference.image_ids)
    return from_replicates(point[0], reps[:, 0], units, seed), from_replicates(point[1], reps[:, 1], units, seed)


def map_estimate(matches: ImageMatches, *, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Estimate:
    """mAP50-95 with its 95 % interval over images."""
    return map_estimates(matches, resamples=resamples, seed=seed)[0]


def paired_map_delta(reference: ImageMatches, candidate: ImageMatches, *, resamples: int = DEFAULT_RESAMPLES,
                     seed: int = DEFAULT_SEED) -> Estimate:
    """Candidate minus reference mAP50-95 in points, with its paired 95 % interval."""
    return paired_map_deltas(reference, candidate, resamples=resamples, seed=seed)[0]


def delta_fields(reference: ImageMatches, candidate: ImageMatches, *, resamples: int = DEFAULT_RESAMPLES,
                 seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """The Δ keys ``--json``, compare.json and build.json carry: candidate minus reference in mAP points with
    the paired 95 % interval of each (``delta_map_ci95`` is mAP50-95's)."""
    d50_95, d50 = paired_map_deltas(reference, candidate, resamples=resamples, seed=seed)
    return {"delta_map50_95": round(d50_95.value, 4), "delta_map_ci95": d50_95.ci_list(),
            "delta_map50": round(d50.value, 4), "delta_map50_ci95": d50.ci_list(),
            "bootstrap": {"units": "images", "images": d50_95.units, "resamples": resamples, "seed": seed}}
