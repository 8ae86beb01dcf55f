"""Annotation records in one serialized buffer, shared by forked DataLoader workers without copy-on-read.

A list of a million small dicts costs ~340 bytes a record in Python objects, and every forked worker that
reads them touches their reference counts, so the pages holding them are copied into each worker one by one
(the host-RAM blow-up of many-worker training on ImageNet-22k-sized lists).  :class:`SerializedRecords` keeps
each record pickled in one numpy ``uint8`` buffer plus an ``int64`` array of end offsets (as detectron2's
``DatasetFromList(serialize=True)`` and mmengine's ``serialize_data``): two objects, whatever the length; reading
record ``i`` unpickles a fresh dict and writes nothing shared.
"""
from __future__ import annotations

import pickle
from typing import Any, Iterable, Iterator, Sequence, Union, overload

import numpy as np


class SerializedRecords(Sequence):
    """An immutable sequence of picklable records (``records[i]`` is a new copy each time)."""

    def __init__(self, records: Iterable[Any] = ()):
        data, ends, end = bytearray(), [], 0
        for record in records:
            blob = pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL)
            data += blob
            end += len(blob)
            ends.append(end)
        self._data = np.frombuffer(bytes(data), dtype=np.uint8)
        self._ends = np.asarray(ends, dtype=np.int64)

    @classmethod
    def wrap(cls, records: Union["SerializedRecords", Iterable[Any]]) -> "SerializedRecords":
        return records if isinstance(records, SerializedRecords) else cls(records)

    @property
    def nbytes(self) -> int:
        """Bytes held: the serialized records plus their offsets."""
        return int(self._data.nbytes + self._ends.nbytes)

    def __len__(self) -> int:
        return len(self._ends)

    def _get(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(self._data[start:int(self._ends[index])].tobytes())

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list: ...

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._get(i) for i in range(*index.indices(len(self)))]
        return self._get(int(index))

    def __iter__(self) -> Iterator[Any]:
        for i in range(len(self)):
            yield self._get(i)

    def __eq__(self, other) -> bool:
        if isinstance(other, SerializedRecords):
            return np.array_equal(self._ends, other._ends) and np.array_equal(self._data, other._data)
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self) -> str:
        return f"SerializedRecords({len(self)} records, {self.nbytes} bytes)"
