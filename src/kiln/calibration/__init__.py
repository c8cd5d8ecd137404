"""Post-training calibration for INT8/FP8: data sources, range calibrators, range collection
over a Graph, and the on-disk calibration cache. Inserting Q/DQ nodes is precision's job."""
from kiln.calibration.cache import load_cache, load_channel_max, model_hash, save_cache
from kiln.calibration.calibrators import (FP8_E4M3_QMAX, INT8_QMAX, METHODS, Entropy, MinMax, Percentile,
                                          make_calibrator, scale_from_amax, weight_scales)
from kiln.calibration.collect import collect_ranges, collect_statistics
from kiln.calibration.data import calibration_batches, folder_batches, iterable_batches, npz_batches

__all__ = ["load_cache", "load_channel_max", "model_hash", "save_cache", "FP8_E4M3_QMAX", "INT8_QMAX", "METHODS",
           "Entropy", "MinMax", "Percentile", "make_calibrator", "scale_from_amax", "weight_scales", "collect_ranges",
           "collect_statistics", "calibration_batches", "folder_batches", "iterable_batches", "npz_batches"]
