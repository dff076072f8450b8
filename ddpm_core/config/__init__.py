"""Everything a run or a checkpoint is configured with, in plain Python (no torch).

The API validates requests and checkpoints with these modules without importing torch;
the library builds its networks, schedules and training runs from the same declarations.

- :mod:`~ddpm_core.config.names`: the vocabulary (samplers, prediction types, presets...).
- :mod:`~ddpm_core.config.checks`: typed field checks and :class:`ConfigError`.
- :mod:`~ddpm_core.config.unet`: :class:`UNetConfig`, its presets and its layout.
- :mod:`~ddpm_core.config.size`: a network's parameter count and activation memory.
- :mod:`~ddpm_core.config.schedule`: a checkpoint's noise schedule section.
- :mod:`~ddpm_core.config.checkpoint`: a checkpoint's ``config.json`` and ``meta.json``.
- :mod:`~ddpm_core.config.paths`: server paths cut out of served metadata.
- :mod:`~ddpm_core.config.options`: how a training option is declared (:class:`Option`).
- :mod:`~ddpm_core.config.train`: :class:`TrainConfig`, every training option, once.

This package imports none of its modules itself: import them by name.
"""
