"""CLIP's BPE tokenizer: a hand-built vocabulary worked through by hand, the original's splitting
rules, where the vocabulary file is found, and (when the real file is installed) known ids."""
import gzip
import sys

import numpy as np
import pytest

from jaxdissect.models import clip_tokenizer as ct


def _write_vocab(path, merges):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: test\n" + "\n".join(merges) + "\n")
    return path


@pytest.fixture
def tiny(tmp_path):
    return ct.ClipTokenizer.load(_write_vocab(tmp_path / "tiny.txt.gz", ["l l", "h e", "he ll", "hell o</w>"]))


def test_bytes_to_unicode_is_a_printable_bijection():
    m = ct.bytes_to_unicode()
    assert sorted(m) == list(range(256)) and len(set(m.values())) == 256
    assert m[ord("a")] == "a" and m[ord(" ")] == chr(256 + 32)  # space is not printable: moved past 255
    assert all(not c.isspace() for c in m.values())


def test_hand_built_vocabulary(tiny):
    # ids: 256 byte symbols ('!' is 0, 'a' is 64 ...), the same with '</w>' (256 ...), then the merges
    # (ll 512, he 513, hell 514, hello</w> 515), then <|startoftext|> 516 and <|endoftext|> 517.
    assert tiny.vocab_size == 518 and (tiny.sot, tiny.eot) == (516, 517)
    l_, l_end, comma_end, bang_end = ord("l") - 33, 256 + ord("l") - 33, 256 + ord(",") - 33, 256 + 0
    # "hello" merges fully; "hell" ends in 'l</w>', so 'l l' never applies: he + l + l</w>
    assert tiny.encode("Hello, hell!") == [515, comma_end, 513, l_, l_end, bang_end]
    ids = tiny(["Hello, hell!", "hello"], context_length=10)
    assert ids.dtype == np.int32 and ids.shape == (2, 10)
    assert ids[0].tolist() == [516, 515, comma_end, 513, l_, l_end, bang_end, 517, 0, 0]
    assert ids[1].tolist() == [516, 515, 517] + [0] * 7
    assert tiny.decode(ids[0, 1:7]) == "hello , hell !"


def test_too_long_text_is_named_or_truncated(tiny):
    with pytest.raises(ValueError, match="'hello hello hello' is 5 tokens long"):
        tiny("hello hello hello", context_length=4)
    assert tiny("hello hello hello", context_length=4, truncate=True)[0].tolist() == [516, 515, 515, 517]


def test_splitting_follows_the_original_pattern():
    assert ct.split_words("don't stop...it's 42ab") == ["don", "'t", "stop", "...", "it", "'s", "4", "2", "ab"]
    assert ct.split_words("a<|endoftext|>b  !'s") == ["a", "<|endoftext|>", "b", "!'", "s"]
    assert ct.split_words("naïve ½x") == ["naïve", "½", "x"]  # ½ is a number (No), one per piece
    assert ct.clean("  A &amp;amp;  B\t\nC ") == "a & b c"


def test_vocabulary_file_is_located(tmp_path, monkeypatch):
    vocab = _write_vocab(tmp_path / ct.VOCAB_FILE, ["a b"])
    monkeypatch.setenv("JAXDISSECT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv(ct.ENV_VAR, raising=False)
    monkeypatch.setattr(ct, "PACKAGES", ("no_such_clip_package_xyz",))
    with pytest.raises(FileNotFoundError, match=r"bpe_simple_vocab_16e6\.txt\.gz was not found.*open-clip-torch"):
        ct.find_bpe_vocab()
    with pytest.raises(FileNotFoundError, match="nope.gz"):
        ct.find_bpe_vocab(tmp_path / "nope.gz")
    monkeypatch.setenv(ct.ENV_VAR, str(vocab))
    assert ct.find_bpe_vocab() == vocab
    monkeypatch.delenv(ct.ENV_VAR)
    # inside an installed package (found without importing it)
    pkg = tmp_path / "site" / "fake_open_clip"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    _write_vocab(pkg / ct.VOCAB_FILE, ["a b"])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(ct, "PACKAGES", ("no_such_clip_package_xyz", "fake_open_clip"))
    assert ct.find_bpe_vocab() == pkg / ct.VOCAB_FILE
    assert "fake_open_clip" not in sys.modules
    # the cache's downloads folder comes first
    (tmp_path / "home" / "downloads").mkdir(parents=True)
    cached = _write_vocab(tmp_path / "home" / "downloads" / ct.VOCAB_FILE, ["a b"])
    assert ct.find_bpe_vocab() == cached


def test_bad_vocabulary_file(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="not a gzip text file"):
        ct.ClipTokenizer.load(bad)
    with pytest.raises(ValueError, match="line 2: expected two symbols"):
        ct.ClipTokenizer.load(_write_vocab(tmp_path / "three.gz", ["a b c"]))


# Ids from open_clip 3.3.0's SimpleTokenizer (a separate implementation using the `regex` and
# ftfy packages) over the same vocabulary file, for texts where ftfy changes nothing.
KNOWN_IDS = {
    "a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407],
    "A red HOUSE with two doors!": [49406, 320, 736, 1212, 593, 1237, 4228, 256, 49407],
    "don't stop... it's 2024 ('quoted')": [49406, 847, 713, 1691, 678, 585, 568, 273, 271, 273, 275, 18235, 27706,
                                           19175, 49407],
    "naïve café — Straße": [49406, 1097, 35689, 563, 15304, 2005, 1894, 127, 253, 324, 49407],
    "emoji 🙂 ½ ² x²": [49406, 16327, 14860, 33613, 41175, 343, 41175, 49407],
}


def test_known_ids_with_the_real_vocabulary():
    try:
        path = ct.find_bpe_vocab()
    except FileNotFoundError:
        pytest.skip("CLIP's BPE vocabulary is not installed (pip install open-clip-torch)")
    tok = ct.ClipTokenizer.load(path)
    assert tok.vocab_size == 49408
    for text, ids in KNOWN_IDS.items():
        assert [tok.sot] + tok.encode(text) + [tok.eot] == ids, text
    assert tok(list(KNOWN_IDS)).shape == (5, 77)
