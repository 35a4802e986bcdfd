"""The Recommender's behaviour on in-memory fakes: strategy choice, exclusions, degraded answers, events."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.errors import InvalidRequest, NotFound
from service.ports import StoreUnavailable
from service.recommender import Event, Limits, Recommender
from tests.service.fakes import FakeEncoder, FakeStore, fake_bundle

T = TypeVar("T")
MUSIC = [f"m{i}" for i in range(1, 31)]
BOOK = [f"b{i}" for i in range(1, 21)]


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def make(retry_after_s: float = 60.0, **limits: int) -> tuple[Recommender, FakeStore]:
    store = FakeStore()
    return Recommender(fake_bundle(), store, None, Limits(**limits), retry_after_s), store


def test_user_with_target_history_is_served_by_the_user_encoder() -> None:
    rec, store = make()
    store.lists[("u", "music")] = ["m3", "m4"]
    store.lists[("u", "book")] = ["b1"]
    r = run(rec.recommend("u", "music", 5))
    assert r.strategy == "gur" and not r.degraded and len(r.items) == 5


def test_user_with_only_source_history_is_served_by_the_bridge_naming_its_source() -> None:
    rec, store = make()
    store.lists[("u", "book")] = ["b1", "b2"]
    r = run(rec.recommend("u", "music", 5))
    assert r.strategy == "bridge" and r.source_domain == "book"


def test_user_with_no_history_gets_popularity_not_flagged_degraded() -> None:
    rec, _ = make()
    r = run(rec.recommend("nobody", "music", 3))
    assert r.strategy == "popular" and not r.degraded
    assert [i for i, _ in r.items] == ["m30", "m29", "m28"]  # fake_bundle's popularity: reversed ids


def test_history_of_ids_unknown_to_the_catalogue_counts_as_no_history() -> None:
    rec, store = make()
    store.lists[("u", "music")] = ["gone-1", "gone-2"]
    assert run(rec.recommend("u", "music", 3)).strategy == "popular"


@settings(max_examples=60, deadline=None)
@given(
    seen=st.lists(st.sampled_from(MUSIC), max_size=30),
    exclude=st.lists(st.sampled_from([*MUSIC, "not-an-item"]), max_size=30),
    source=st.lists(st.sampled_from(BOOK), max_size=5),
    k=st.integers(1, 40),
    exclude_seen=st.booleans(),
)
def test_recommendations_are_sorted_unique_never_seen_never_excluded_and_k_long(
    seen: list[str], exclude: list[str], source: list[str], k: int, exclude_seen: bool
) -> None:
    rec, store = make(max_k=40)
    store.lists[("u", "music")] = seen
    store.lists[("u", "book")] = source
    r = run(rec.recommend("u", "music", k, exclude_seen, exclude))
    ids = [i for i, _ in r.items]
    scores = [s for _, s in r.items]
    banned = set(exclude) | (set(seen) if exclude_seen else set())
    assert scores == sorted(scores, reverse=True)
    assert len(set(ids)) == len(ids)
    assert not banned & set(ids)
    assert len(ids) == min(k, len(set(MUSIC) - banned))


def test_popularity_covers_the_whole_catalogue_past_its_list() -> None:
    rec, _ = make(max_k=100)
    r = run(rec.recommend("nobody", "music", 100, exclude=MUSIC[:5]))
    assert len(r.items) == 25 and not {"m1", "m2", "m3", "m4", "m5"} & {i for i, _ in r.items}


def test_store_down_answers_popularity_flagged_degraded() -> None:
    rec, store = make()
    store.lists[("u", "music")] = ["m1"]
    store.down = "redis_unreachable"
    r = run(rec.recommend("u", "music", 4, exclude=["m30"]))
    assert (r.strategy, r.degraded, r.fallback) == ("popular", True, "redis_unreachable")
    assert "m30" not in [i for i, _ in r.items] and len(r.items) == 4


def test_one_failed_read_degrades_that_request_only() -> None:
    rec, store = make(retry_after_s=60)
    store.down = "redis_timeout"
    assert run(rec.recommend("u", "music", 3)).degraded
    store.down = None
    reads = store.reads
    r = run(rec.recommend("u", "music", 3))
    assert not r.degraded and store.reads == reads + 1 and rec.health.up


def test_consecutive_refusals_open_the_circuit_until_a_probe_succeeds() -> None:
    rec, store = make(retry_after_s=60)
    store.down = "redis_unreachable"
    for _ in range(rec.health.policy.refusals):
        run(rec.recommend("u", "music", 3))
    assert not rec.health.up
    store.down = None
    reads = store.reads
    r = run(rec.recommend("u", "music", 3))
    assert r.degraded and r.fallback == "redis_skipped" and store.reads == reads  # no store call spent
    assert run(rec.check_store()) is True
    assert not run(rec.recommend("u", "music", 3)).degraded


def test_the_store_is_probed_again_once_the_open_window_is_over() -> None:
    rec, store = make(retry_after_s=0.0)
    store.down = "redis_unreachable"
    for _ in range(rec.health.policy.refusals):
        run(rec.recommend("u", "music", 3))
    store.down = None
    assert not run(rec.recommend("u", "music", 3)).degraded


def test_a_failing_encoder_answers_popularity_flagged_degraded() -> None:
    rec, store = make()
    store.lists[("u", "music")] = ["m1"]

    def broken(feeds: object) -> object:
        raise RuntimeError("onnxruntime exploded")

    object.__setattr__(rec.bundle.encoders["music"], "encoder", broken)
    r = run(rec.recommend("u", "music", 3))
    assert r.strategy == "popular" and r.degraded and r.fallback == "model_error:RuntimeError"


def test_events_are_visible_to_the_next_recommendation() -> None:
    rec, store = make()
    assert run(rec.recommend("u", "music", 3)).strategy == "popular"
    run(rec.append([Event("u", "book", "b2")]))
    assert run(rec.recommend("u", "music", 3)).strategy == "bridge"
    run(rec.append([Event("u", "music", "m7"), Event("u", "music", "m8")]))
    r = run(rec.recommend("u", "music", 29))
    assert r.strategy == "gur" and not {"m7", "m8"} & {i for i, _ in r.items}
    assert store.lists[("u", "music")] == ["m7", "m8"]


def test_appended_lists_keep_only_the_newest_max_len_items() -> None:
    rec, store = make()
    run(rec.append([Event("u", "music", f"m{i}") for i in range(1, 16)]))
    assert store.lists[("u", "music")] == [f"m{i}" for i in range(6, 16)]  # fake_bundle max_len 10


@pytest.mark.parametrize(
    ("event", "code", "named"),
    [
        (Event("u", "video", "v1"), "unknown_domain", "'video'"),
        (Event("u", "music", "b1"), "unknown_item", "'b1'"),
    ],
)
def test_a_batch_with_an_unknown_domain_or_item_is_refused_whole_naming_it(event: Event, code: str, named: str) -> None:
    rec, store = make()
    with pytest.raises(InvalidRequest) as info:
        run(rec.append([Event("u", "music", "m1"), event]))
    assert info.value.code == code and named in info.value.message and "event 1" in info.value.message
    assert store.lists == {}  # nothing of the batch was written


def test_events_are_refused_when_the_store_is_down() -> None:
    rec, store = make()
    store.down = "redis_unreachable"
    with pytest.raises(StoreUnavailable):
        run(rec.append([Event("u", "music", "m1")]))
    assert rec.health.last_error == "redis_unreachable"


def test_an_event_repeating_its_event_id_is_counted_as_a_duplicate_not_appended() -> None:
    rec, store = make()
    first = run(rec.append([Event("u", "music", "m1", "e1"), Event("u", "music", "m2")]))
    again = run(rec.append([Event("u", "music", "m1", "e1"), Event("u", "music", "m3", "e3")]))
    assert (first.appended, first.duplicates, again.appended, again.duplicates) == (2, 0, 1, 1)
    assert store.lists[("u", "music")] == ["m1", "m2", "m3"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.recommend("u", "music", 0), "k must be between 1 and 20"),
        (lambda r: r.recommend("u", "music", 21), "k must be between 1 and 20"),
        (lambda r: r.recommend("x" * 17, "music", 5), "user_id must be 1 to 16"),
        (lambda r: r.recommend("u{1}", "music", 5), "must not contain"),
        (lambda r: r.recommend("u", "music", 5, exclude=["m1"] * 4), "exclude holds at most 3"),
        (lambda r: r.recommend("u", "book", 5), "not served"),
        (lambda r: r.recommend("u", "video", 5), "not served"),
        (lambda r: r.cold_start("u", "book", 5), "not served"),
        (lambda r: r.append([Event("u", "music", "m1")] * 4), "at most 3 events"),
        (lambda r: r.append([]), "no events"),
        (lambda r: r.similar("m1", "book", 5), "no item index"),
    ],
)
def test_requests_outside_the_limits_are_refused_with_a_message(call: Any, message: str) -> None:
    rec, _ = make(max_k=20, max_id_len=16, max_exclude=3, max_batch=3)
    with pytest.raises(InvalidRequest, match=message):
        run(call(rec))


def test_cold_start_uses_the_bridge_and_names_the_source_domain_even_for_a_known_user() -> None:
    rec, store = make()
    store.lists[("u", "music")] = ["m1"]
    store.lists[("u", "book")] = ["b4"]
    r = run(rec.cold_start("u", "music", 5))
    assert (r.strategy, r.source_domain) == ("bridge", "book") and "m1" not in {i for i, _ in r.items}


def test_cold_start_without_source_history_falls_back_to_popularity() -> None:
    rec, _ = make()
    r = run(rec.cold_start("nobody", "music", 5))
    assert r.strategy == "popular" and r.source_domain is None


def test_similar_items_exclude_the_item_itself_and_unknown_items_are_not_found() -> None:
    rec, _ = make()
    r = run(rec.similar("m5", "music", 29))
    assert len(r.items) == 29 and "m5" not in {i for i, _ in r.items}
    with pytest.raises(NotFound):
        run(rec.similar("m99", "music", 5))


def test_a_swapped_bundle_serves_the_next_request() -> None:
    rec, _ = make()
    old = rec.swap(fake_bundle(version="fake-2"))
    assert old.version == "fake-1" and run(rec.recommend("u", "music", 3)).model_version == "fake-2"


def test_the_encoder_is_fed_left_padded_model_ids() -> None:
    rec, _ = make()
    encoder = rec.bundle.encoders["music"]
    assert isinstance(encoder.encoder, FakeEncoder)
    feeds = encoder.feeds({"music": ["m2", "m9"]}, rec.bundle.catalogues)
    assert feeds["target_seq"].tolist() == [[0] * 8 + [2, 9]]  # model id = row + 1, most recent last
    assert feeds["source_seq"].tolist() == [[0] * 10]


def test_concurrent_requests_share_batched_native_calls_and_each_gets_its_own_answer() -> None:
    from concurrent.futures import ThreadPoolExecutor

    bundle, store = fake_bundle(), FakeStore()
    for u in range(24):
        store.lists[(f"u{u}", "music")] = MUSIC[u : u + 3]
        store.lists[(f"u{u}", "book")] = BOOK[u % 20 : u % 20 + 2]
        store.lists[(f"c{u}", "book")] = BOOK[u % 20 : u % 20 + 1]
    users = [f"u{u}" for u in range(24)] + [f"c{u}" for u in range(24)]
    inline = Recommender(bundle, store, None, Limits(), 60.0)

    async def both() -> tuple[list[Any], list[Any], int]:
        with ThreadPoolExecutor(1) as pool:
            batched = Recommender(bundle, store, pool, Limits(), 60.0)
            got = await asyncio.gather(*(batched.recommend(u, "music", 7) for u in users))
            assert batched.batcher is not None
            batches = batched.batcher.batches
        want = [await inline.recommend(u, "music", 7) for u in users]
        return list(got), want, batches

    got, want, batches = run(both())
    assert [(r.strategy, [i for i, _ in r.items]) for r in got] == [(r.strategy, [i for i, _ in r.items]) for r in want]
    assert batches < len(users)  # requests that waited were run together


def test_a_failing_encoder_in_a_batch_answers_popularity_for_its_requests_only() -> None:
    from concurrent.futures import ThreadPoolExecutor

    bundle, store = fake_bundle(), FakeStore()
    store.lists[("u", "music")] = ["m1"]
    store.lists[("c", "book")] = ["b1"]

    def broken(feeds: object) -> object:
        raise RuntimeError("boom")

    object.__setattr__(bundle.encoders["music"], "encoder", broken)

    async def go() -> list[Any]:
        with ThreadPoolExecutor(1) as pool:
            rec = Recommender(bundle, store, pool, Limits(), 60.0)
            return list(await asyncio.gather(rec.recommend("u", "music", 3), rec.recommend("c", "music", 3)))

    gur, bridge = run(go())
    assert (gur.strategy, gur.degraded) == ("popular", True)
    assert (bridge.strategy, bridge.degraded) == ("bridge", False)


class YieldingStore(FakeStore):
    """Suspends once per read, as a real round trip does: gathered requests are all in progress together."""

    async def read(self, user_id: str, domains: Any) -> dict[str, list[str]]:
        await asyncio.sleep(0)
        return await super().read(user_id, domains)


def test_a_lone_request_runs_on_the_loop_and_a_crowd_goes_through_the_batcher() -> None:
    bundle, store = fake_bundle(), YieldingStore()
    for u in range(24):
        store.lists[(f"u{u}", "music")] = MUSIC[u : u + 3]
        store.lists[(f"u{u}", "book")] = BOOK[u % 20 : u % 20 + 2]
    users = [f"u{u}" for u in range(24)]
    graph = bundle.encoders["music"]
    threads: list[int] = []
    real = graph.encoder

    def recording(feeds: Any) -> Any:
        threads.append(threading.get_ident())
        return real(feeds)

    object.__setattr__(graph, "encoder", recording)
    reference = Recommender(bundle, store, None, Limits(), 60.0)

    async def go() -> tuple[Recommender, list[Any], list[Any]]:
        with ThreadPoolExecutor(1) as pool:
            rec = Recommender(bundle, store, pool, Limits(), 60.0, inline_max_active=2)
            lone = [await rec.recommend(u, "music", 7) for u in users[:3]]  # one at a time: light load
            loop_thread = threading.get_ident()
            assert threads[-3:] == [loop_thread] * 3, "a lone request must not hop to the executor"
            crowd = list(await asyncio.gather(*(rec.recommend(u, "music", 7) for u in users)))
        return rec, lone, crowd

    rec, lone, crowd = run(go())
    want = [run(reference.recommend(u, "music", 7)) for u in users]
    assert [[i for i, _ in r.items] for r in lone] == [[i for i, _ in r.items] for r in want[:3]]
    assert [[i for i, _ in r.items] for r in crowd] == [[i for i, _ in r.items] for r in want]
    assert rec.batcher is not None
    assert rec.inlined == 3  # the 24 gathered were all in progress at once: none ran on the loop
    assert rec.batcher.jobs == len(users) and rec.batcher.batches < len(users)
    assert rec.active == 0  # every request counted itself out, answered or not


def test_inline_at_light_load_is_off_at_zero() -> None:
    bundle, store = fake_bundle(), FakeStore()
    store.lists[("u", "music")] = ["m1", "m2"]

    async def go() -> Recommender:
        with ThreadPoolExecutor(1) as pool:
            rec = Recommender(bundle, store, pool, Limits(), 60.0, inline_max_active=0)
            await rec.recommend("u", "music", 5)
            return rec

    rec = run(go())
    assert rec.inlined == 0 and rec.batcher is not None and rec.batcher.jobs == 1
