"""The SeedVR2 networks: `nadit.NaDiT` (3B and 7B) and `vae.VideoAutoencoder`."""

import logging


class _DropEmptyFp32Warning(logging.Filter):
    # diffusers 0.42 warns on every `ModelMixin.to(dtype)` that modules "should be kept in float32: []", even
    # when the list is empty. Our models keep nothing in fp32 by module (they upcast per op), so it is noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropEmptyFp32Warning())
