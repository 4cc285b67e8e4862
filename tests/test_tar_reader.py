import io
import tarfile

import pytest
import webdataset as wds

from mimkit.data.tar_reader import TarFormatError, _number, iter_samples, read_shard

LONG_DIR = "a-directory-name-long-enough-that-ustar-needs-its-prefix-field-" * 2


def write_tar(path, fmt):
    """Members of every kind a shard may hold, in the given tar dialect."""
    members = [
        ("0001.jpg", b"jpeg bytes"),
        ("0001.cls", b"3"),
        ("0001.json", b'{"w": 1}'),
        ("__cache__/0003.jpg", b"{}"),  # webdataset metadata: skipped
        (f"{LONG_DIR}/0002.seg.png", b"\x89PNG" * 300),  # > 100 characters, 2 extensions
        (f"{LONG_DIR}/0002.CLS", b"4"),  # extensions are lower-cased
        ("noextension", b"skipped"),
        ("unicode-\u00e9t\u00e9.jpg", b"x" * 513),  # non-ASCII name, crosses a block boundary
        ("empty.txt", b""),
    ]
    with tarfile.open(path, "w", format=fmt) as tar:
        folder = tarfile.TarInfo("somedir")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000.5  # a float mtime makes tarfile write PAX records
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("0009.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "0001.jpg"
        tar.addfile(link)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_samples_equal_webdatasets_reader(tmp_path, fmt):
    if fmt == tarfile.USTAR_FORMAT:  # ustar cannot store the non-ASCII name's mtime or name
        path = tmp_path / "ustar.tar"
        with tarfile.open(path, "w", format=fmt) as tar:
            for name, data in [("0001.jpg", b"j"), (f"{LONG_DIR}/0002.png", b"p" * 700)]:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    else:
        path = tmp_path / "shard.tar"
        write_tar(path, fmt)
    ours = list(read_shard(str(path)))
    theirs = list(wds.tarfile_to_samples()([{"url": str(path)}]))
    assert ours == theirs
    assert len(ours) >= 2
    assert any(len(sample["__key__"]) > 100 for sample in ours)


def test_grouping_and_extensions(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, tarfile.GNU_FORMAT)
    samples = {s["__key__"]: s for s in read_shard(str(path))}
    assert samples["0001"]["cls"] == b"3" and samples["0001"]["json"] == b'{"w": 1}'
    second = samples[f"{LONG_DIR}/0002"]
    assert set(second) == {"__key__", "__url__", "seg.png", "cls"}
    assert second["seg.png"] == b"\x89PNG" * 300
    assert samples["unicode-\u00e9t\u00e9"]["jpg"] == b"x" * 513
    assert samples["empty"]["txt"] == b""
    assert "0009" not in samples and "__cache__/0003" not in samples


def test_corrupt_and_truncated_archives_raise(tmp_path):
    path = tmp_path / "shard.tar"
    write_tar(path, tarfile.PAX_FORMAT)
    data = path.read_bytes()
    with pytest.raises(TarFormatError, match="truncated"):
        list(iter_samples(io.BytesIO(data[: 512 * 6 + 100])))
    broken = bytearray(data)
    broken[0] ^= 0xFF  # first header's name: checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        list(iter_samples(io.BytesIO(bytes(broken))))


def test_duplicate_member_in_a_sample_is_an_error():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for _ in range(2):
            info = tarfile.TarInfo("0001.jpg")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(TarFormatError, match="duplicate"):
        list(iter_samples(io.BytesIO(buffer.getvalue())))


def test_numeric_fields_octal_and_base256():
    assert _number(tarfile.itn(0o755, 8, tarfile.GNU_FORMAT)) == 0o755
    assert _number(tarfile.itn(2**40, 12, tarfile.GNU_FORMAT)) == 2**40  # > 8 GiB member
    assert _number(b"\x00" * 12) == 0
