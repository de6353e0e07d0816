"""`appliance convert SRC DST`: the converter from the command line, errors as one clear line."""

from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from appliance.cli.main import main
from tests.fixtures.tinybert import write_tiny_bert


def test_convert_writes_the_gguf_and_draws_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_tiny_bert(tmp_path / "bert")
    dst = tmp_path / "out.gguf"
    assert main(["convert", str(src), str(dst), "--dtype", "f32"]) == 0
    reader = gguf.GGUFReader(dst)
    assert reader.fields["general.file_type"].contents() == gguf.LlamaFileType.ALL_F32
    err = capsys.readouterr().err
    assert "convert" in err and "100%" in err and f"wrote {dst}" in err


def test_convert_error_is_one_line_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["convert", str(tmp_path), str(tmp_path / "out.gguf")]) == 1
    err = capsys.readouterr().err
    assert "error: " in err and "no config.json" in err
    assert "Traceback" not in err
