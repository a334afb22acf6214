"""The litdata internals mertlab relies on (:mod:`mertlab.data.litdata_api`): each exists on the
installed litdata and behaves as the adapter expects, a moved one is one clear
``LitdataAPIError``, and no other module reaches into litdata's internals."""

from __future__ import annotations

import re
import sys
from importlib.metadata import requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from mertlab.data import litdata_api as la
from mertlab.data.litdata_api import LitdataAPIError, LoaderCounters
from mertlab.errors import MertlabError

pytestmark = pytest.mark.filterwarnings("ignore")

ITEMS = 12
BATCH = 2
PER_EPOCH = ITEMS // BATCH
CORE = Path(__file__).resolve().parent.parent / "core"


@pytest.fixture(scope="module")
def numbers(tmp_path_factory):
    """A litdata dataset of ``{"i": 0..11}``, several chunks (so shuffling has chunks to order)."""
    folder = tmp_path_factory.mktemp("numbers") / "train"
    writer = la.binary_writer(str(folder), 64)
    for i in range(ITEMS):
        writer[i] = {"i": i}
    writer.done()
    writer.merge()
    return folder


def make_loader(folder, workers=2):
    from litdata import StreamingDataLoader, StreamingDataset

    dataset = StreamingDataset(str(folder), shuffle=True, seed=7)
    return StreamingDataLoader(dataset, batch_size=BATCH, num_workers=workers)


class Numbers(list):
    """A batch of item numbers that can carry the streaming loader's ``position``."""

    position = None


def collate(items):
    return Numbers(int(i["i"]) for i in items)


def run_epoch(loader):
    """Each batch of one epoch with the loader's counters right after it was handed out."""
    return [(batch["i"].tolist(), la.loader_counters(loader)) for batch in loader]


def one_line(exc: pytest.ExceptionInfo, *names: str) -> None:
    text = str(exc.value)
    assert len(text.splitlines()) == 1, text
    assert isinstance(exc.value, MertlabError)
    assert f"litdata{la.SUPPORTED}" in text and version("litdata") in text, text
    for name in names:
        assert name in text, text


# --------------------------------------------------------------------------- the supported range
def test_supported_range_is_the_package_requirement_and_holds_the_installed_litdata():
    (requirement,) = [Requirement(r) for r in requires("mertlab") or [] if Requirement(r).name == "litdata"]
    assert requirement.specifier == SpecifierSet(la.SUPPORTED)
    assert any(s.operator == "<" for s in requirement.specifier)  # bounded above
    assert version("litdata") in requirement.specifier


def test_no_other_module_reaches_into_litdata_internals():
    """Only the adapter imports litdata's internal modules or names its private attributes."""
    internal_import = re.compile(r"^\s*(from|import)\s+litdata\.", re.MULTILINE)
    private = re.compile(r"_num_samples_yielded|_latest_worker_idx|_DOWNLOADERS|\.restore\b")
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        if path.name == "litdata_api.py":
            continue
        text = path.read_text()
        if internal_import.search(text) or ("litdata" in text and private.search(text)):
            offenders.append(str(path.relative_to(CORE)))
    assert offenders == []


# --------------------------------------------------------------------------- each internal, as expected
def test_downloader_schemes_name_litdatas_object_stores():
    schemes = la.downloader_schemes()
    assert {"s3://", "gs://", "local:"} <= set(schemes)

    from mertlab.data.shards import is_url

    assert is_url("s3://bucket/shards") and is_url("local:/tmp/x") and not is_url("/tmp/x")
    assert not is_url("nosuchscheme://bucket/x")


def test_download_file_copies_one_file_of_a_store(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "meta.json").write_text('{"a": 1}')
    local = tmp_path / "cache" / "meta.json"
    local.parent.mkdir()
    la.download_file(f"local:{store}", f"local:{store}/meta.json", local)
    assert local.read_text() == '{"a": 1}'


def test_binary_writer_writes_what_streaming_dataset_reads(numbers):
    from litdata import StreamingDataset

    dataset = StreamingDataset(str(numbers))
    assert sorted(int(dataset[i]["i"]) for i in range(len(dataset))) == list(range(ITEMS))
    assert len(list(numbers.glob("chunk-*.bin"))) > 1


def test_loader_counters_count_the_batches_handed_out(numbers):
    loader = make_loader(numbers)
    assert not la.is_restoring(loader)
    assert la.dataset_epoch(loader.dataset) == 1
    epoch = run_epoch(loader)
    assert [c.samples for _, c in epoch] == [BATCH * (k + 1) for k in range(PER_EPOCH)]
    assert {c.epoch for _, c in epoch} == {1}
    assert [c.worker for _, c in epoch] == [k % 2 for k in range(PER_EPOCH)]  # workers take turns
    assert sorted(i for batch, _ in epoch for i in batch) == list(range(ITEMS))
    second = run_epoch(loader)
    assert {c.epoch for _, c in second} == {2} and la.dataset_epoch(loader.dataset) == 2
    assert [b for b, _ in second] != [b for b, _ in epoch]  # reshuffled


@pytest.mark.parametrize("cut", [1, 4])
def test_state_at_earlier_counters_resumes_mid_epoch_there(numbers, cut):
    """What :class:`~mertlab.data.streaming.ShardLoader` does: the loader ran ahead, its counters
    are set back to those of batch ``cut`` for ``state_dict``; a new loader restored from that
    state yields exactly the rest of the epoch, then the next epoch as usual."""
    reference = make_loader(numbers)
    epochs = [run_epoch(reference), run_epoch(reference)]

    ahead = make_loader(numbers)
    iterator = iter(ahead)
    for _ in range(cut + 1):  # one batch further than training consumed (Lightning prefetches)
        next(iterator)
    consumed = epochs[0][cut - 1][1]
    saved, saved_epoch = la.loader_counters(ahead), la.dataset_epoch(ahead.dataset)
    assert saved.samples == (cut + 1) * BATCH
    la.set_loader_counters(ahead, consumed)
    la.set_dataset_epoch(ahead.dataset, consumed.epoch)
    state = ahead.state_dict()
    la.set_loader_counters(ahead, saved)
    la.set_dataset_epoch(ahead.dataset, saved_epoch)
    assert la.loader_counters(ahead) == saved
    assert state["num_samples_yielded"] == cut * BATCH and state["current_epoch"] == 1

    resumed = make_loader(numbers)
    resumed.load_state_dict(state)
    assert la.is_restoring(resumed)
    rest = [batch["i"].tolist() for batch in resumed]
    assert rest == [b for b, _ in epochs[0][cut:]]
    assert not la.is_restoring(resumed)
    assert [b for b, _ in run_epoch(resumed)] == [b for b, _ in epochs[1]]


def test_end_restore_starts_the_next_epoch_instead_of_replaying(numbers):
    reference = make_loader(numbers)
    epochs = [run_epoch(reference), run_epoch(reference)]
    first = make_loader(numbers)
    iterator = iter(first)
    for _ in range(2):
        next(iterator)
    resumed = make_loader(numbers)
    resumed.load_state_dict(first.state_dict())
    la.end_restore(resumed)
    assert not la.is_restoring(resumed)
    assert [b for b, _ in run_epoch(resumed)] == [b for b, _ in epochs[1]]


def test_shard_loader_through_the_adapter_resumes_mid_epoch(numbers):
    """The streaming loader keeps its state at the batch marked consumed, through the adapter."""
    from mertlab.data.streaming import ShardLoader

    def shard_loader():
        from litdata import StreamingDataset

        dataset = StreamingDataset(str(numbers), shuffle=True, seed=7)
        return ShardLoader(dataset, train=True, batch_size=BATCH, num_workers=2, collate_fn=collate)

    whole = [list(b) for b in shard_loader()]
    first = shard_loader()
    iterator = iter(first)
    for _ in range(3):
        batch = next(iterator)
        if batch.position[1] < 2:
            first.mark_consumed(*batch.position)
    assert batch.position == (1, 2)
    resumed = shard_loader()
    resumed.load_state_dict(first.state_dict())
    assert [list(b) for b in resumed] == whole[2:]


# --------------------------------------------------------------------------- a moved internal
def test_a_moved_loader_attribute_is_one_clear_error(numbers):
    loader = make_loader(numbers, workers=0)
    del loader._num_samples_yielded_streaming
    with pytest.raises(LitdataAPIError) as exc:
        la.loader_counters(loader)
    one_line(exc, "StreamingDataLoader._num_samples_yielded_streaming")
    with pytest.raises(LitdataAPIError) as exc:  # never set as a new attribute litdata would ignore
        la.set_loader_counters(loader, LoaderCounters(1, 2, 0))
    one_line(exc, "_num_samples_yielded_streaming")
    assert not hasattr(loader, "_num_samples_yielded_streaming")


def test_an_attribute_of_another_type_is_one_clear_error(numbers):
    loader = make_loader(numbers, workers=0)
    loader._latest_worker_idx = "0"
    with pytest.raises(LitdataAPIError) as exc:
        la.loader_counters(loader)
    one_line(exc, "StreamingDataLoader._latest_worker_idx", "str")


def test_a_moved_restore_flag_fails_the_shard_loader_loudly(numbers):
    from litdata import StreamingDataset

    from mertlab.data.streaming import ShardLoader

    loader = ShardLoader(StreamingDataset(str(numbers)), train=True, batch_size=BATCH)
    del loader.restore
    with pytest.raises(LitdataAPIError) as exc:
        next(iter(loader))
    one_line(exc, "StreamingDataLoader.restore")


def test_a_moved_dataset_epoch_is_one_clear_error(numbers):
    from litdata import StreamingDataset

    dataset = StreamingDataset(str(numbers))
    del dataset.current_epoch
    with pytest.raises(LitdataAPIError) as exc:
        la.dataset_epoch(dataset)
    one_line(exc, "StreamingDataset.current_epoch")


def test_moved_downloaders_are_one_clear_error(monkeypatch):
    import litdata.streaming.downloader as downloader

    from mertlab.data.shards import is_shard_path

    monkeypatch.delattr(downloader, "_DOWNLOADERS")
    with pytest.raises(LitdataAPIError) as exc:
        la.downloader_schemes()
    one_line(exc, "litdata.streaming.downloader._DOWNLOADERS")
    with pytest.raises(LitdataAPIError):  # deciding whether data.path is a store fails, not guesses
        is_shard_path("s3://bucket/shards")
    monkeypatch.setattr(downloader, "_DOWNLOADERS", ["s3://"], raising=False)
    with pytest.raises(LitdataAPIError) as exc:
        la.downloader_schemes()
    one_line(exc, "_DOWNLOADERS as a mapping")


def test_a_moved_internal_module_is_one_clear_error(monkeypatch, tmp_path):
    # imported first: litdata's own __init__ imports the writer, which fails from the next line on
    import litdata.streaming.downloader as downloader

    monkeypatch.setitem(sys.modules, "litdata.streaming.writer", None)  # the import fails
    with pytest.raises(LitdataAPIError) as exc:
        la.binary_writer(str(tmp_path / "x"), 64)
    one_line(exc, "module litdata.streaming.writer")

    monkeypatch.delattr(downloader, "get_downloader")
    with pytest.raises(LitdataAPIError) as exc:
        la.download_file("local:/nowhere", "local:/nowhere/x", tmp_path / "x")
    one_line(exc, "litdata.streaming.downloader.get_downloader")
