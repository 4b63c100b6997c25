"""The torch-free runtime that training and the HTTP layer share.

Training writes what these modules define (model versions, cards, datasets) and the HTTP
layer (`service/*.py`) serves it; nothing here imports torch, BentoML, starlette or the
HTTP layer, so `training` → `service.core` ← `service` is the only direction of imports.
"""
