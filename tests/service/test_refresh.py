"""`cdrec refresh` against a real redis-server: every user written, a killed pass resumes, --only-stale, and the
service's cached path answers exactly what its computed path answers."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from core.manifest import current_bundle
from core.redis_keys import emb_key, refresh_cursor_key, seq_key, sequence_fingerprint, unpack_embedding
from core.settings import RedisSettings
from service.adapters.redis_store import RedisSequenceStore
from service.bundle import ServingBundle, load_bundle
from service.recommender import Recommender
from service.refresh import RefreshJob, RefreshStats, encode_users, main
from tests.service.conftest import RedisServer, fresh_db

DB = 7  # a database of its own: the API tests write users into db 0 of the same server
N_USERS = 240


@pytest.fixture(scope="module")
def bundle(service_artifacts: Path) -> ServingBundle:
    return load_bundle(current_bundle(service_artifacts))


@pytest.fixture
def rdb(redis_server: RedisServer) -> Iterator[redis.Redis]:
    yield from fresh_db(redis_server, DB)


def seed(client: redis.Redis, bundle: ServingBundle, n: int = N_USERS, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    music, book = bundle.catalogues["music"].ids, bundle.catalogues["book"].ids
    users = [f"user-{i}" for i in range(n)]
    pipe = client.pipeline(transaction=False)
    for user in users:
        pipe.rpush(seq_key(user, "music"), *rng.choice(music, size=int(rng.integers(1, 12))).tolist())
        if rng.random() < 0.5:
            pipe.rpush(seq_key(user, "book"), *rng.choice(book, size=int(rng.integers(1, 6))).tolist())
    pipe.set("cdrec:other:key", "not a user")  # matched by no pattern: SCAN must skip it
    pipe.execute()
    return users


def seqs_of(client: redis.Redis, user: str, domains: list[str]) -> dict[str, list[str]]:
    return {d: [x.decode() for x in client.lrange(seq_key(user, d), 0, -1)] for d in domains}


def test_refresh_writes_every_user_with_version_fingerprint_and_the_services_vector(
    rdb: redis.Redis, bundle: ServingBundle
) -> None:
    users = seed(rdb, bundle)
    job = RefreshJob(rdb, bundle, "music", batch_size=32)
    stats = job.run(progress=False)
    assert stats.finished and stats.encoded == stats.scanned == N_USERS and stats.batches > 1
    assert rdb.get(refresh_cursor_key("music")) is None
    graph = bundle.encoders["music"]
    for user in users[:: len(users) // 20]:
        cached = unpack_embedding(rdb.get(emb_key(user, "music")))
        assert cached is not None
        version, fingerprint, vector = cached
        seqs = seqs_of(rdb, user, graph.read_domains())
        assert version == bundle.version
        assert fingerprint == sequence_fingerprint(seqs, graph.read_domains())
        one = graph.encoder(graph.feeds(seqs, bundle.catalogues))[0]  # the service's own per-request encoding
        np.testing.assert_allclose(vector, one, rtol=1e-5, atol=1e-5)
    assert all(rdb.exists(emb_key(u, "music")) for u in users)


def test_a_killed_pass_resumes_from_the_stored_cursor_without_redoing_done_work(
    rdb: redis.Redis, bundle: ServingBundle
) -> None:
    seed(rdb, bundle)
    job = RefreshJob(rdb, bundle, "music", batch_size=16)

    def crash_after_three(stats: RefreshStats) -> None:
        if stats.batches == 3:
            raise KeyboardInterrupt  # killed between batches: the third batch and its cursor are stored

    with pytest.raises(KeyboardInterrupt):
        job.run(on_batch=crash_after_three, progress=False)
    cursor = job.stored_cursor()
    assert cursor != 0
    done = {k.decode() for k in rdb.scan_iter(match="cdrec:{u:*}:emb:music", count=1000)}
    assert 16 * 3 <= len(done) < N_USERS
    before = {k: rdb.get(k) for k in done}

    rest = job.run(progress=False)
    assert rest.resumed_from == cursor and rest.finished
    assert len(done) + rest.scanned == N_USERS  # nothing written before the kill is scanned again
    assert sum(1 for _ in rdb.scan_iter(match="cdrec:{u:*}:emb:music", count=1000)) == N_USERS
    assert rdb.get(refresh_cursor_key("music")) is None
    assert {k: rdb.get(k) for k in done} == before

    again = job.run(progress=False)  # a new pass: idempotent, the same bytes
    assert again.resumed_from == 0 and again.scanned == N_USERS
    assert {k: rdb.get(k) for k in done} == before


def test_only_stale_touches_only_users_whose_sequences_or_version_changed(
    rdb: redis.Redis, bundle: ServingBundle
) -> None:
    users = seed(rdb, bundle)
    job = RefreshJob(rdb, bundle, "music", batch_size=64)
    job.run(progress=False)
    before = {u: rdb.get(emb_key(u, "music")) for u in users}

    fresh = job.run(only_stale=True, progress=False)
    assert fresh.encoded == 0 and fresh.skipped == N_USERS

    changed_seq = users[:5]
    for u in changed_seq:  # a new event in the target domain, or in a source domain the encoder reads
        rdb.rpush(seq_key(u, "music"), bundle.catalogues["music"].ids[0])
    other_version = users[5:8]
    for u in other_version:
        _, fp, vec = unpack_embedding(before[u]) or ("", "", np.zeros(1, np.float32))
        rdb.set(emb_key(u, "music"), b"old-version|" + fp.encode() + b"|" + vec.astype("<f4").tobytes())
    missing = users[8:10]
    rdb.delete(*(emb_key(u, "music") for u in missing))

    stale = job.run(only_stale=True, progress=False)
    touched = set(changed_seq) | set(other_version) | set(missing)
    assert stale.encoded == len(touched) and stale.skipped == N_USERS - len(touched)
    after = {u: rdb.get(emb_key(u, "music")) for u in users}
    assert all(after[u] == before[u] for u in users if u not in touched)
    assert all(after[u] != before[u] for u in changed_seq)
    assert all(after[u] == before[u] for u in other_version + missing)  # rewritten, same sequences: same bytes


def test_cached_and_computed_paths_give_the_same_recommendations(
    rdb: redis.Redis, bundle: ServingBundle, redis_server: RedisServer
) -> None:
    users = seed(rdb, bundle, n=60, seed=3)
    store = RedisSequenceStore.from_url(f"{redis_server.url[:-2]}/{DB}", RedisSettings())

    async def answers() -> list[tuple[list[tuple[str, float]], str, bool]]:
        rec = Recommender(bundle, store)
        out = []
        for u in users:
            r = await rec.recommend(u, "music", 10)
            out.append((r.items, r.strategy, r.cached))
        return out

    async def scenario() -> tuple[list[tuple[list[tuple[str, float]], str, bool]], ...]:
        computed = await answers()
        RefreshJob(rdb, bundle, "music", batch_size=16).run(progress=False)
        cached = await answers()
        rdb.rpush(seq_key(users[0], "music"), bundle.catalogues["music"].ids[1])  # now stale: computed again
        stale = await answers()
        await store.aclose()
        return computed, cached, stale

    computed, cached, stale = asyncio.run(scenario())
    assert not any(c for _, _, c in computed) and all(c for _, _, c in cached)
    assert {s for _, s, _ in computed} == {s for _, s, _ in cached} == {"gur"}
    for (a, _, _), (b, _, _) in zip(computed, cached, strict=True):
        assert [i for i, _ in a] == [i for i, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], rtol=1e-4, atol=1e-5)
    assert not stale[0][2] and all(c for _, _, c in stale[1:])


def test_encode_users_matches_one_at_a_time(rdb: redis.Redis, bundle: ServingBundle) -> None:
    users = seed(rdb, bundle, n=10)
    graph = bundle.encoders["music"]
    seqs = [seqs_of(rdb, u, graph.read_domains()) for u in users]
    batch = encode_users(graph, bundle, seqs)
    for row, s in zip(batch, seqs, strict=True):
        np.testing.assert_allclose(row, graph.encoder(graph.feeds(s, bundle.catalogues))[0], rtol=1e-5, atol=1e-5)


def test_the_cli_refreshes_and_reports(
    rdb: redis.Redis, bundle: ServingBundle, service_artifacts: Path, redis_server: RedisServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seed(rdb, bundle, n=50)
    url = f"{redis_server.url[:-2]}/{DB}"
    assert main(["--redis-url", url, "--artifacts", str(service_artifacts), "--no-progress"]) == 0
    assert "refresh music: 50 users scanned, 50 encoded" in capsys.readouterr().out
    assert main(["--redis-url", url, "--artifacts", str(service_artifacts), "--no-progress", "--only-stale"]) == 0
    assert "0 encoded, 50 fresh skipped" in capsys.readouterr().out


def test_cdrec_refresh_killed_with_sigkill_resumes_from_its_cursor(
    rdb: redis.Redis, bundle: ServingBundle, service_artifacts: Path, redis_server: RedisServer
) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    n = 3000
    seed(rdb, bundle, n=n, seed=5)
    url = f"{redis_server.url[:-2]}/{DB}"
    cmd = [sys.executable, "-m", "core.cli", "refresh", "--redis-url", url, "--artifacts", str(service_artifacts),
           "--batch-size", "8", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.monotonic() + 60
    while rdb.get(refresh_cursor_key("music")) is None:  # killed once its first batches are stored
        assert proc.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.005)
    time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()
    cursor = int(rdb.get(refresh_cursor_key("music")) or 0)
    done = sum(1 for _ in rdb.scan_iter(match="cdrec:{u:*}:emb:music", count=1000))
    assert cursor != 0 and 0 < done < n

    rest = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rest.returncode == 0, rest.stderr
    m = re.search(r"refresh music: (\d+) users scanned, (\d+) encoded.*resumed from cursor (\d+)", rest.stdout)
    assert m, rest.stdout
    assert int(m.group(3)) == cursor and int(m.group(1)) == int(m.group(2))
    assert done + int(m.group(1)) == n  # the cursor moved with each MSET: nothing stored before the kill is redone
    assert sum(1 for _ in rdb.scan_iter(match="cdrec:{u:*}:emb:music", count=1000)) == n
    assert rdb.get(refresh_cursor_key("music")) is None


def test_catalogue_encodes_a_batch_row_by_row_as_it_encodes_one_history() -> None:
    from service.bundle import Catalogue

    cat = Catalogue("music", ["a", "b", "c", "d"], [0, 1, 2, 3], [4.0, 3.0, 2.0, 1.0]).extended(["added"])
    histories = [[], ["a"], ["b", "zzz", "added", "c"], ["d", "c", "b", "a", "d", "c"]]  # unknown and text-added
    batch = cat.encode_many(histories, 4)
    assert batch.shape == (4, 4)
    for row, items in zip(batch, histories, strict=True):
        np.testing.assert_array_equal(row, cat.encode(items, 4))
    np.testing.assert_array_equal(batch[2], [0, 0, 2, 3])  # "zzz" unknown, "added" has no model id: left padding
    np.testing.assert_array_equal(batch[3], [2, 1, 4, 3])  # the 4 newest (b a d c), oldest dropped


def test_with_a_user_ttl_the_vectors_written_expire_like_the_users_lists(
    rdb: redis.Redis, bundle: ServingBundle
) -> None:
    users = seed(rdb, bundle, n=40)
    RefreshJob(rdb, bundle, "music", batch_size=16).run(progress=False)
    assert {rdb.ttl(emb_key(u, "music")) for u in users} == {-1}  # no TTL set: kept until rewritten
    RefreshJob(rdb, bundle, "music", batch_size=16, ttl_s=3600).run(progress=False)
    ttls = [rdb.ttl(emb_key(u, "music")) for u in users]
    assert all(3500 < t <= 3600 for t in ttls), ttls
    assert rdb.get(refresh_cursor_key("music")) is None and rdb.ttl("cdrec:other:key") == -1
