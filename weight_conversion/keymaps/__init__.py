"""Key maps from the published PyTorch checkpoints to the Flax ports, one module per model family
(vgg, alexnet, resnet152, proggan), each with `config_from_torch(state)` and `convert(state, config)`.
The shared checking and layout helpers are in `common`."""
from weight_conversion.keymaps.common import Entry, KeyMapError, apply_keymap, check_keys, require

__all__ = ["Entry", "KeyMapError", "apply_keymap", "check_keys", "require"]
