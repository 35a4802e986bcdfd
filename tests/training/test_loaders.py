"""Loaders: every format parses to the right users / items / order / ratings, and bad input fails clearly."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from training.data.interactions import PAD, DataError, Interactions
from training.data.loaders import (
    load,
    load_amazon_ratings,
    load_amazon_ratings_files,
    load_art_office,
    load_douban,
    load_interactions_file,
)


def write(path: Path, text: str) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def triples(data: Interactions, domain: str) -> list[tuple[str, str, int]]:
    """(external user, external item, order) of one domain, sorted by user then order."""
    f = data.frame[data.frame["domain"] == domain].sort_values(["user", "order"], kind="stable")
    return [
        (data.user_ids[u], data.item_ids[domain][i], int(o))
        for u, i, o in zip(f["user"], f["item"], f["order"], strict=True)
    ]


def assert_well_formed(data: Interactions) -> None:
    f = data.frame
    assert sorted(f["user"].unique()) == list(range(data.n_users))
    for d in data.domains:
        assert data.item_ids[d][0] == PAD
        items = f.loc[f["domain"] == d, "item"]
        assert items.min() >= 1 and items.max() <= data.n_items(d)


GENERIC = """user_id,item_id,domain,timestamp,rating
u1,a1,books,100,4
u1,m1,music,50,5
u2,a2,books,300,3.5
u2,a1,books,200,2
"""


# --------------------------------------------------------------------------- generic file


@pytest.mark.parametrize("name", ["data.csv", "data.csv.gz"])
def test_generic_csv_maps_ids_per_domain_with_zero_as_padding(tmp_path: Path, name: str) -> None:
    data = load_interactions_file(write(tmp_path / name, GENERIC))
    assert_well_formed(data)
    assert data.user_ids == ["u1", "u2"]
    assert data.item_ids == {"books": [PAD, "a1", "a2"], "music": [PAD, "m1"]}
    assert triples(data, "books") == [("u1", "a1", 100), ("u2", "a1", 200), ("u2", "a2", 300)]
    assert sorted(data.frame["rating"]) == [2.0, 3.5, 4.0, 5.0]
    assert data.name == "data"


def test_generic_tsv_with_position_has_no_ratings(tmp_path: Path) -> None:
    text = "user_id\titem_id\tdomain\tposition\nu1\ti9\td\t1\nu1\ti8\td\t0\n"
    data = load_interactions_file(write(tmp_path / "x.tsv", text))
    assert triples(data, "d") == [("u1", "i8", 0), ("u1", "i9", 1)]
    assert not data.has_ratings
    assert data.frame["order"].dtype == np.int64


def test_generic_txt_sniffs_tab_delimiter(tmp_path: Path) -> None:
    text = "user_id\titem_id\tdomain\tposition\nu1\ti1\td\t0\n"
    data = load_interactions_file(write(tmp_path / "x.txt", text))
    assert triples(data, "d") == [("u1", "i1", 0)]


def test_generic_iso_timestamps_order_like_the_times(tmp_path: Path) -> None:
    text = (
        "user_id,item_id,domain,timestamp\n"
        "u,late,d,2021-03-01T10:00:00Z\n"
        "u,early,d,2021-03-01 09:00:00+00:00\n"
        "u,mid,d,2021-03-01T11:30:00+02:00\n"
    )
    data = load_interactions_file(write(tmp_path / "t.csv", text))
    assert [i for _, i, _ in triples(data, "d")] == ["early", "mid", "late"]
    assert data.frame["order"].dtype == np.int64


def test_generic_parquet_reads_typed_columns(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [7, 7, 8],
            "item_id": ["x", "y", "x"],
            "domain": ["a", "a", "b"],
            "timestamp": pd.to_datetime(["2020-01-02", "2020-01-01", "2020-01-03"]),
            "rating": [1.0, 2.0, 3.0],
        }
    )
    path = tmp_path / "p.parquet"
    frame.to_parquet(path)
    data = load_interactions_file(path)
    assert_well_formed(data)
    assert data.user_ids == ["7", "8"]
    assert [i for _, i, _ in triples(data, "a")] == ["y", "x"]
    assert data.has_ratings


def test_generic_loader_reports_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_interactions_file(tmp_path / "nope.csv")


def test_generic_loader_lists_missing_and_found_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "cols.csv", "user_id,item,domain\nu,i,d\n")
    with pytest.raises(DataError) as err:
        load_interactions_file(path)
    msg = str(err.value)
    assert "cols.csv" in msg and "line 1" in msg
    assert "item_id, timestamp or position" in msg and "found columns: user_id, item, domain" in msg


def test_generic_loader_reports_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"empty\.csv: empty file"):
        load_interactions_file(write(tmp_path / "empty.csv", ""))


def test_generic_loader_reports_header_without_rows(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"head\.csv: no data rows after the header on line 1"):
        load_interactions_file(write(tmp_path / "head.csv", "user_id,item_id,domain,position\n"))


def test_generic_loader_reports_line_of_bad_rating(tmp_path: Path) -> None:
    text = GENERIC.replace("u2,a2,books,300,3.5", "u2,a2,books,300,great")
    with pytest.raises(DataError, match=r"r\.csv: line 4: rating 'great' is not a number"):
        load_interactions_file(write(tmp_path / "r.csv", text))


@pytest.mark.parametrize("value", ["inf", "nan", "1e300", ""])
def test_generic_loader_rejects_non_finite_or_empty_rating(tmp_path: Path, value: str) -> None:
    text = GENERIC.replace("u1,m1,music,50,5", f"u1,m1,music,50,{value}")
    with pytest.raises(DataError, match=r"r\.csv: line 3: .*rating"):
        load_interactions_file(write(tmp_path / "r.csv", text))


def test_generic_loader_reports_line_of_bad_position(tmp_path: Path) -> None:
    text = "user_id,item_id,domain,position\nu,i,d,0\n\nu,j,d,1.5\n"
    with pytest.raises(DataError, match=r"p\.csv: line 4: position '1\.5' is not an integer"):
        load_interactions_file(write(tmp_path / "p.csv", text))


def test_generic_loader_reports_line_of_bad_timestamp(tmp_path: Path) -> None:
    text = "user_id,item_id,domain,timestamp\nu,i,d,2020-01-01\nu,j,d,yesterday\n"
    with pytest.raises(DataError, match=r"t\.csv: line 3: timestamp 'yesterday' is neither"):
        load_interactions_file(write(tmp_path / "t.csv", text))


def test_generic_loader_reports_line_of_empty_id(tmp_path: Path) -> None:
    text = "user_id,item_id,domain,position\nu,i,d,0\n ,j,d,1\n"
    with pytest.raises(DataError, match=r"e\.csv: line 3: empty user_id"):
        load_interactions_file(write(tmp_path / "e.csv", text))


def test_generic_loader_reports_line_with_too_many_fields(tmp_path: Path) -> None:
    text = "user_id,item_id,domain,position\nu,i,d,0\nu,j,d,1\nu,k,d,2,extra\n"
    with pytest.raises(DataError, match=r"w\.csv\.gz: line 4: wrong number of fields: expected 4, found 5"):
        load_interactions_file(write(tmp_path / "w.csv.gz", text))


def test_generic_loader_reports_line_with_too_few_fields(tmp_path: Path) -> None:
    text = "user_id,item_id,domain,position\nu,i,d,0\nu,j,d\n"
    with pytest.raises(DataError, match=r"w\.csv: line 3: wrong number of fields: expected 4, found 3"):
        load_interactions_file(write(tmp_path / "w.csv", text))


def test_generic_loader_reports_parquet_row(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pd.DataFrame({"user_id": ["a", "b"], "item_id": ["x", "y"], "domain": ["d", "d"], "position": [0, 1],
                  "rating": [1.0, float("nan")]}).to_parquet(path)  # fmt: skip
    with pytest.raises(DataError, match=r"p\.parquet: row 2: empty rating"):
        load_interactions_file(path)


def test_generic_loader_wraps_corrupt_parquet(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.parquet", "not parquet at all")
    with pytest.raises(DataError, match=r"bad\.parquet: cannot read Parquet"):
        load_interactions_file(path)


def test_generic_loader_rejects_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x\.xlsx: unsupported file type"):
        load_interactions_file(write(tmp_path / "x.xlsx", GENERIC))


# --------------------------------------------------------------------------- Art-Office


ITEMS = (
    "item_id\tdomain\tsource_row_id\ttitle\tattributes\n"
    "0\tart\t0\tred paint\tarts paint\n"
    "1\tart\t1\tbrush\tarts tools\n"
    "2\tart\t2\tcanvas\t\n"
    "3\toffice\t0\tstapler\toffice supplies\n"
    "4\toffice\t1\tpen\toffice writing\n"
    "5\toffice\t2\tunused desk\toffice furniture\n"
)
SEQUENCES = (
    "user_idx\tuser_id\tsplit\thistory\ttarget_1\ttarget_1_domain\ttarget_2\ttarget_2_domain\n"
    "0\tAU1\ttrain\t0 3 1\t4\toffice\t2\tart\n"  # targets in different domains: both at order L
    "1\tAU2\ttest\t3 0\t1\tart\t2\tart\n"  # both art: second one at L+1
)


def art_office_root(tmp_path: Path, items: str = ITEMS, sequences: str = SEQUENCES) -> Path:
    (tmp_path / "derived").mkdir()
    write(tmp_path / "derived" / "items.tsv.gz", items)
    write(tmp_path / "derived" / "sequences.tsv.gz", sequences)
    return tmp_path


def test_art_office_orders_history_then_targets(tmp_path: Path) -> None:
    data = load_art_office(art_office_root(tmp_path))
    assert_well_formed(data)
    assert data.domains == ["art", "office"]
    assert data.user_ids == ["AU1", "AU2"]
    assert triples(data, "art") == [("AU1", "0", 0), ("AU1", "1", 2), ("AU1", "2", 3),
                                    ("AU2", "0", 1), ("AU2", "1", 2), ("AU2", "2", 3)]  # fmt: skip
    assert triples(data, "office") == [("AU1", "3", 1), ("AU1", "4", 3), ("AU2", "3", 0)]
    assert not data.has_ratings


def test_art_office_catalog_covers_unseen_items_with_text(tmp_path: Path) -> None:
    data = load_art_office(art_office_root(tmp_path))
    assert data.item_ids == {"art": [PAD, "0", "1", "2"], "office": [PAD, "3", "4", "5"]}
    assert data.n_items("office") == 3  # "unused desk" never occurs but is rankable
    assert data.item_text["art"] == ["", "red paint. arts paint", "brush. arts tools", "canvas"]
    assert data.item_text["office"][3] == "unused desk. office furniture"


def test_art_office_reports_unknown_history_item(tmp_path: Path) -> None:
    root = art_office_root(tmp_path, sequences=SEQUENCES.replace("3 0\t", "3 99\t"))
    with pytest.raises(DataError, match=r"sequences\.tsv\.gz: line 3: history item '99' is not in items"):
        load_art_office(root)


def test_art_office_reports_target_domain_mismatch(tmp_path: Path) -> None:
    root = art_office_root(tmp_path, sequences=SEQUENCES.replace("4\toffice", "4\tart"))
    with pytest.raises(DataError, match=r"sequences\.tsv\.gz: line 2: target_1 '4' is an 'office' item"):
        load_art_office(root)


def test_art_office_reports_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"items\.tsv\.gz: file not found"):
        load_art_office(tmp_path)


# --------------------------------------------------------------------------- Douban


def douban_root(
    tmp_path: Path, book: str = "1\t10\t4\n1\t11\t5\n2\t10\t3\n", music: str = "2\t7\t1\n3\t8\t2\n"
):
    write(tmp_path / "douban_book_ratings.dat.gz", book)
    write(tmp_path / "douban_music_ratings.dat.gz", music)
    return tmp_path


def test_douban_shares_users_and_orders_by_line(tmp_path: Path) -> None:
    data = load_douban(douban_root(tmp_path))
    assert_well_formed(data)
    assert data.user_ids == ["1", "2", "3"]
    assert data.item_ids == {"book": [PAD, "10", "11"], "music": [PAD, "7", "8"]}
    assert triples(data, "book") == [("1", "10", 1), ("1", "11", 2), ("2", "10", 3)]
    stats = data.stats().set_index("domain")
    assert stats.loc["book", "overlap_users"] == 1 and stats.loc["music", "users"] == 2
    book = data.frame[data.frame["domain"] == "book"]
    assert list(book["rating"]) == [4.0, 5.0, 3.0]


def test_douban_reports_line_with_wrong_field_count(tmp_path: Path) -> None:
    root = douban_root(tmp_path, music="2\t7\t1\n3\t8\n")
    with pytest.raises(DataError, match=r"douban_music_ratings\.dat\.gz: line 2: wrong number of fields"):
        load_douban(root)


def test_douban_reports_line_of_bad_rating(tmp_path: Path) -> None:
    root = douban_root(tmp_path, book="1\t10\t4\n1\t11\tfive\n")
    with pytest.raises(
        DataError, match=r"douban_book_ratings\.dat\.gz: line 2: rating 'five' is not a number"
    ):
        load_douban(root)


# --------------------------------------------------------------------------- Amazon ratings


def test_amazon_csv_without_header_uses_timestamp_order(tmp_path: Path) -> None:
    path = write(tmp_path / "ratings_Books.csv", "A1,B2,5.0,1400000000\nA1,B1,3.0,1300000000\nA2,B1,1.0,1\n")
    data = load_amazon_ratings(path, "books")
    assert_well_formed(data)
    assert triples(data, "books") == [("A1", "B1", 1300000000), ("A1", "B2", 1400000000), ("A2", "B1", 1)]
    assert data.has_ratings


def test_amazon_csv_accepts_a_header_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "user,item,rating,timestamp\nA1,B2,5.0,14\n")
    assert triples(load_amazon_ratings(path, "x"), "x") == [("A1", "B2", 14)]


def test_amazon_csv_reports_line_of_bad_rating(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "A1,B2,5.0,14\nA1,B3,x,15\n")
    with pytest.raises(DataError, match=r"r\.csv: line 2: rating 'x' is not a number"):
        load_amazon_ratings(path, "x")


def test_amazon_csv_reports_line_with_wrong_field_count(tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", "A1,B2,5.0,14\nA1,B3,4.0\n")
    with pytest.raises(DataError, match=r"r\.csv: line 2: wrong number of fields: expected 4, found 3"):
        load_amazon_ratings(path, "x")


def test_amazon_json_lines_across_files_share_reviewers(tmp_path: Path) -> None:
    recs = [{"reviewerID": "A1", "asin": "B1", "overall": 4.0, "unixReviewTime": 20},
            {"reviewerID": "A2", "asin": "B2", "overall": 2.0, "unixReviewTime": 10}]  # fmt: skip
    books = write(tmp_path / "Books.json.gz", "\n".join(json.dumps(r) for r in recs) + "\n")
    music = write(tmp_path / "music.csv", "A1,M1,5,30\n")
    data = load_amazon_ratings_files([(books, "books"), (music, "music")])
    assert_well_formed(data)
    assert data.user_ids == ["A1", "A2"]
    assert triples(data, "music") == [("A1", "M1", 30)]
    assert data.stats().set_index("domain").loc["books", "overlap_users"] == 1


def test_amazon_json_reports_line_of_malformed_record(tmp_path: Path) -> None:
    good = json.dumps({"reviewerID": "A1", "asin": "B1", "overall": 4.0, "unixReviewTime": 20})
    path = write(tmp_path / "r.jsonl", f"{good}\n{{broken\n")
    with pytest.raises(DataError, match=r"r\.jsonl: line 2: invalid JSON"):
        load_amazon_ratings(path, "x")


def test_amazon_json_reports_line_of_missing_key(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", json.dumps({"reviewerID": "A1", "asin": "B1", "unixReviewTime": 1}))
    with pytest.raises(DataError, match=r"r\.json: line 1: missing or empty 'rating' or 'overall'"):
        load_amazon_ratings(path, "x")


# --------------------------------------------------------------------------- dispatcher


def test_load_dispatches_on_directory_layout_and_file(tmp_path: Path) -> None:
    (tmp_path / "ao").mkdir()
    (tmp_path / "db").mkdir()
    assert load(art_office_root(tmp_path / "ao")).name == "amazon_art_office"
    assert load(douban_root(tmp_path / "db")).domains == ["book", "music"]
    assert load(write(tmp_path / "g.csv", GENERIC)).domains == ["books", "music"]


def test_load_reads_an_amazon_ratings_csv_and_several_files_as_domains(tmp_path: Path) -> None:
    books = write(tmp_path / "ratings_Books.csv", "A1,B2,5.0,1400000000\nA1,B1,3.0,1300000000\nA2,B1,1.0,1\n")
    music = write(tmp_path / "Music.json", json.dumps({"reviewerID": "A1", "asin": "M1", "overall": 4.0,
                                                       "unixReviewTime": 5}))
    one = load(books)  # no domain column: the file is one domain, named after it
    assert one.domains == ["ratings_Books"] and one.has_ratings and one.n_items("ratings_Books") == 2
    both = load(f"books={books},music={music}")
    assert both.domains == ["books", "music"] and triples(both, "music") == [("A1", "M1", 5)]
    assert len(both.user_ids) == 2  # reviewer ids are shared: A1 is in both domains
    assert load(f"{books},{music}").domains == ["Music", "ratings_Books"]
    with pytest.raises(DataError, match="no such file"):
        load(f"books={books},music={tmp_path / 'absent.csv'}")
    with pytest.raises(DataError, match="same domain"):
        load(f"x={books},x={music}")


def test_a_generic_file_is_not_taken_for_amazon_ratings(tmp_path: Path) -> None:
    assert load(write(tmp_path / "g.csv", GENERIC)).domains == ["books", "music"]
    # four columns with a domain: the generic format, whose errors name its own columns
    with pytest.raises(DataError, match="timestamp or position"):
        load(write(tmp_path / "h.csv", "user_id,item_id,domain,rating\nu,i,d,1\n"))


def test_load_reports_missing_path_and_unknown_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file or directory"):
        load(tmp_path / "missing")
    with pytest.raises(DataError, match="not a known dataset"):
        load(tmp_path)
