"""What images an encoder expects: one :class:`InputSpec` type and the one rule for defaults.

The reference trained and evaluated with ImageNet statistics, so a 3-channel encoder that does not say otherwise
gets ImageNet mean/std; any other channel count gets 0.5 / 0.5 (pixels in [-1, 1]). Every reader, writer and
model uses this rule through :meth:`InputSpec.default`; nothing else spells it out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "InputSpec", "pair"]


def pair(x: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    h, w = x
    return (int(h), int(w))


@dataclass(frozen=True, eq=False)
class InputSpec(Mapping):
    """Size (H, W), channels and the normalisation an encoder was trained with.

    Read-only mapping access (``spec["mean"]``) is kept so that code and files that hold the spec as a dict
    (checkpoints, JSON metadata) read the same keys; :meth:`to_dict` is the JSON form."""

    image_size: tuple[int, int]
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self):
        object.__setattr__(self, "image_size", pair(self.image_size))
        object.__setattr__(self, "in_chans", int(self.in_chans))
        c = self.in_chans
        for key in ("mean", "std"):
            v = getattr(self, key)
            v = (float(v),) if isinstance(v, (int, float)) else tuple(float(t) for t in v)
            if len(v) == 1 and c > 1:  # one statistic for a multi-channel encoder applies to every channel
                v = v * c
            if len(v) != c:
                raise ValueError(f"input_spec {key}={v} does not have in_chans={c} entries")
            object.__setattr__(self, key, v)

    @classmethod
    def default(cls, image_size: int | Sequence[int] = 224, in_chans: int = 3) -> InputSpec:
        """The one default rule: ImageNet statistics for 3 channels, 0.5 / 0.5 otherwise."""
        c = int(in_chans)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)
        return cls(pair(image_size), c, mean, std)

    @classmethod
    def coerce(cls, spec: InputSpec | Mapping[str, Any] | None, *, image_size: Any = 224,
               in_chans: int = 3) -> InputSpec:
        """A full spec from a possibly partial mapping: keys it lacks come from :meth:`default` at the given
        size and channels (the encoder's own, where there is one)."""
        if isinstance(spec, InputSpec):
            return spec
        given = {k: v for k, v in dict(spec or {}).items() if v is not None and k in _KEYS}
        c = int(given.get("in_chans", in_chans))
        base = cls.default(given.get("image_size", image_size), c)
        return cls(**{**base.to_dict(), **given})

    def replace(self, **changes: Any) -> InputSpec:
        return InputSpec(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (lists, not tuples)."""
        return {"image_size": list(self.image_size), "in_chans": self.in_chans, "mean": list(self.mean),
                "std": list(self.std)}

    # read-only mapping access, so dict-shaped callers and files keep working
    def __getitem__(self, key: str) -> Any:
        if key not in _KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_KEYS)

    def __len__(self) -> int:
        return len(_KEYS)

    def __eq__(self, other: object) -> bool:
        """Equal to another spec or to any mapping holding the same values (lists and tuples alike), so a spec
        compares as the dict it replaces."""
        if not isinstance(other, Mapping):
            return NotImplemented
        try:
            other = InputSpec(**{k: other[k] for k in _KEYS})
        except (KeyError, TypeError, ValueError):
            return False
        return self._values() == other._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def _values(self) -> tuple:
        return (self.image_size, self.in_chans, self.mean, self.std)

    def __str__(self) -> str:
        h, w = self.image_size
        stats = "ImageNet mean/std" if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD) else \
            f"mean {self.mean}, std {self.std}"
        return f"{h} x {w}, {self.in_chans} channel{'s' if self.in_chans != 1 else ''}, {stats}"


_KEYS = tuple(f.name for f in fields(InputSpec))
