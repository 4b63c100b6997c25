"""Distribution and novelty metrics, one file each, each exporting `compute(...)`.

Their inputs differ (features, images, distances), so `training.evaluate` calls each by name
rather than through a registry:

- `kid`: KID on features (`features.image_features`, an offline random CNN).
- `coverage`: precision, recall, density, coverage on the same features.
- `novelty`: quantiles of `service.core.novelty` novelty and the copy fraction.
- `fid`: FID, only with a user-supplied Inception-v3 weights file (no downloads).
"""
