"""Key maps from the published PyTorch checkpoints to the Flax ports, one module per model family
(vgg, alexnet, resnet152, proggan, clip, segmenters), each with `config_from_torch(state)` and
`convert(state, config)`. The architecture facts a map needs (stage layouts, conv lists) are
passed in by the model module (`keymap(...)` -> a bound `KeyMap`); nothing here imports jaxdissect.
The shared checking and layout helpers are in `common`."""
from weight_conversion.keymaps.common import Entry, KeyMap, KeyMapError, apply_keymap, check_keys, require

__all__ = ["Entry", "KeyMap", "KeyMapError", "apply_keymap", "check_keys", "require"]
