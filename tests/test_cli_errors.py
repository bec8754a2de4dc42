"""Command-line errors that once reached the generic handler (an exception's name, exit 1) or printed a page:
each is one short line with exit code 2, found before any work."""

from __future__ import annotations

import pytest

from emolens.cli import main


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_serve_refuses_a_max_upload_that_is_not_a_finite_positive_number(value, capsys):
    assert main(["serve", "--max-upload-mb", value]) == 2
    captured = capsys.readouterr()
    assert "--max-upload-mb" in captured.err and captured.err.count("\n") == 1
    assert "http://" not in captured.out + captured.err  # refused before the banner
