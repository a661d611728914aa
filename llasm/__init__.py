"""llasm: trainable bilingual speech-language models (frozen Whisper + adaptor + causal LM).

The public names (``build_model``, ``load_model``, ``load_audio``, ``AudioError``, ``PromptTooLongError``,
``LlasmConfig``, ``LlasmForConditionalGeneration``, ``LlasmProcessor``) load on first use (PEP 562), so ``import llasm``
and every ``llasm <command> --help`` start without torch or transformers.

``import llasm`` still registers the model with the transformers Auto classes, so
``AutoModel.from_pretrained(dir)`` and ``AutoProcessor.from_pretrained(dir)`` work without
``trust_remote_code``. ``configuration``, ``modeling`` and ``processing`` each register their class
when imported; until then a stand-in holds the ``llasm`` model type in transformers' config mapping,
put there by a post-import hook on ``transformers.models.auto.configuration_auto`` (the pattern of
``wrapt.register_post_import_hook``; it imports nothing itself, so it is safe inside any import). The
first look-up of the type (``AutoConfig`` / ``AutoModel`` / ``AutoProcessor.from_pretrained``) imports
the three modules, which replace the stand-in with the real classes.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"

_PUBLIC = {"AudioError": "llasm.audio", "load_audio": "llasm.audio", "build_model": "llasm.builder",
           "load_model": "llasm.builder", "LlasmConfig": "llasm.configuration",
           "LlasmForConditionalGeneration": "llasm.modeling", "LlasmProcessor": "llasm.processing",
           "PromptTooLongError": "llasm.processing"}
__all__ = sorted(_PUBLIC)

CONFIG_AUTO = "transformers.models.auto.configuration_auto"
PROCESSING_AUTO = "transformers.models.auto.processing_auto"
REGISTRARS = ("llasm.configuration", "llasm.modeling", "llasm.processing")  # each registers its class


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'llasm' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


def _register_everything() -> None:
    """Import the modules that register llasm with the Auto classes (replacing the stand-ins)."""
    for name in REGISTRARS:
        importlib.import_module(name)


class _Deferred(type):
    """Metaclass of the stand-ins: any attribute or call loads the real classes and forwards to them."""

    def __getattr__(cls, name):
        return getattr(cls.real(), name)

    def __call__(cls, *args, **kwargs):
        return cls.real()(*args, **kwargs)


class LlasmConfigStandIn(metaclass=_Deferred):
    """Holds the ``llasm`` model type in transformers' config mapping until the real config is needed."""

    model_type = "llasm"

    @staticmethod
    def real():
        _register_everything()
        return sys.modules["llasm.configuration"].LlasmConfig


def _real_processor():
    _register_everything()
    return sys.modules["llasm.processing"].LlasmProcessor


# found by its name (``processor_class`` in processor_config.json) until the real one loads; not bound to
# llasm.LlasmProcessor, which is the real class
_ProcessorStandIn = _Deferred("LlasmProcessor", (), {"real": staticmethod(_real_processor), "__doc__": "stand-in"})


def _hold(module) -> None:
    """Put the stand-ins into the Auto mapping ``module`` defines, unless the real classes are there."""
    if module.__name__ == CONFIG_AUTO and "llasm" not in module.CONFIG_MAPPING:
        module.CONFIG_MAPPING.register("llasm", LlasmConfigStandIn, exist_ok=True)
    if module.__name__ == PROCESSING_AUTO and "llasm.processing" not in sys.modules:
        module.PROCESSOR_MAPPING.register(LlasmConfigStandIn, _ProcessorStandIn, exist_ok=True)


class _HoldAfterImport(importlib.abc.MetaPathFinder):
    """Runs :func:`_hold` right after transformers' ``configuration_auto`` / ``processing_auto`` ran."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in (CONFIG_AUTO, PROCESSING_AUTO):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _hold(module)

        spec.loader.exec_module = exec_module  # this module's own loader object only
        return spec


for _name in (CONFIG_AUTO, PROCESSING_AUTO):
    if _name in sys.modules:  # transformers' Auto classes are loaded already
        _hold(sys.modules[_name])
if not any(isinstance(f, _HoldAfterImport) for f in sys.meta_path):
    sys.meta_path.insert(0, _HoldAfterImport())
