"""The entry-point guard: user errors become one message, bugs keep their traceback."""

from __future__ import annotations

import pytest
from hydra.errors import InstantiationException

from lungexp.utils.errors import ConfigError, LungexpError, look_up_option, report_user_errors


def _raising(error: BaseException):
    @report_user_errors
    def main() -> None:
        raise error

    return main


def test_user_error_prints_one_line_and_exits_1(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LUNGEXP_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        _raising(ConfigError("data.root=/x does not exist"))()
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "error: data.root=/x does not exist\n"


def test_user_error_wrapped_by_instantiate_is_found(capsys, monkeypatch) -> None:
    """Hydra's instantiate wraps what a constructor raises; the message is still the user error's."""
    monkeypatch.delenv("LUNGEXP_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    try:
        raise LungexpError("model.net.depth=11 is not a valid choice")
    except LungexpError as cause:
        wrapped = InstantiationException("Error in call to target 'ResNet3D'")
        wrapped.__cause__ = cause
    with pytest.raises(SystemExit):
        _raising(wrapped)()
    assert capsys.readouterr().err == "error: model.net.depth=11 is not a valid choice\n"


@pytest.mark.parametrize("variable", ["LUNGEXP_DEBUG", "HYDRA_FULL_ERROR"])
def test_debug_switch_re_raises_user_errors(variable: str, monkeypatch) -> None:
    monkeypatch.setenv(variable, "1")
    with pytest.raises(ConfigError):
        _raising(ConfigError("bad"))()


def test_bugs_keep_their_exception() -> None:
    with pytest.raises(ZeroDivisionError):
        _raising(ZeroDivisionError("a bug"))()


def test_ctrl_c_is_one_line_and_status_130(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        _raising(KeyboardInterrupt())()
    assert exit_.value.code == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"


def test_look_up_option_suggests_the_closest_choice() -> None:
    assert look_up_option("data.split.method", "series", ["subsets", "series"]) == "series"
    with pytest.raises(ConfigError, match=r"data\.split\.method='subset'.*did you mean 'subsets'"):
        look_up_option("data.split.method", "subset", ["subsets", "series"])
