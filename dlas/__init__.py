"""dlas: explore the Deep Learning Acceleration Stack, one config group per layer."""

from dlas.config import register_configs

__version__ = "0.1.0"

register_configs()
