"""Freezing that survives `from_pretrained`."""


class FreezeAfterLoadingMixin:
    """For a `PreTrainedModel` whose config freezes some parameters.

    `__init__` freezes them through `_apply_freezing`, but transformers 5 loads every checkpoint weight into a new,
    trainable parameter, which would silently unfreeze them; `from_pretrained` therefore applies the freeze again.
    """

    def _apply_freezing(self) -> None:
        raise NotImplementedError(f"{type(self).__name__} must say which parameters its config freezes.")

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        loaded = super().from_pretrained(*args, **kwargs)
        (loaded[0] if isinstance(loaded, tuple) else loaded)._apply_freezing()  # tuple with output_loading_info=True
        return loaded


__all__ = ["FreezeAfterLoadingMixin"]
