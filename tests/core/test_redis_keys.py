"""The Redis key layout (DESIGN §5): one hash tag per user, so all of a user's keys share a cluster slot."""

from core.redis_keys import emb_key, seq_key


def test_sequence_and_embedding_keys_follow_the_documented_layout() -> None:
    assert seq_key("u42", "music") == "cdrec:{u:u42}:seq:music"
    assert emb_key("u42", "book") == "cdrec:{u:u42}:emb:book"


def test_every_key_of_a_user_carries_the_same_hash_tag() -> None:
    def tag(key: str) -> str:
        return key[key.index("{") + 1 : key.index("}")]

    keys = [seq_key("a:b", "music"), seq_key("a:b", "book"), emb_key("a:b", "music")]
    assert {tag(k) for k in keys} == {"u:a:b"}
