"""What the command line says when it is given something it cannot use: the option named, what to do next, and an
exit status a script can rely on.  Nothing here needs a broker or a bidder: broker addresses are malformed, or point
at a port nothing listens on, or at a socket that accepts and never answers.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bidder.cli import build_parser, main
from tests.conftest import ROOT

NOBODY = "127.0.0.1:9"  # the discard port: nothing listens there
CAMPAIGNS = str(ROOT / "deploy" / "campaigns.example.json")
BAD_BROKERS = ["host:notaport", "nonsense", "127.0.0.1:70000", "127.0.0.1:"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int | str | None, str]:
    """(exit status, stderr) of `streambid ARGV` run in-process, whether it returns or exits."""
    try:
        code: int | str | None = main(list(argv))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def help_of(*command: str) -> str:
    """The --help text of a (sub)command, on one line."""
    parser = build_parser()
    for name in command:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return " ".join(parser.format_help().split())


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An address that accepts connections and never answers: a wrong port, or a broker that hangs."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for s in held:
        s.close()


# -- broker addresses ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("broker", BAD_BROKERS)
def test_serve_refuses_a_broker_that_is_not_host_port(broker: str, capsys: pytest.CaptureFixture[str]) -> None:
    """`host:notaport` printed Python's "invalid literal for int()"; `nonsense` was tried as nonsense:9092."""
    code, err = run(capsys, "serve", "--broker", broker, "--campaigns", CAMPAIGNS, "--port", "0")
    assert code == 2 and f"--broker {broker!r}" in err and "is not HOST:PORT" in err and "invalid literal" not in err


def test_serve_names_kafka_bootstrap_when_it_is_the_bad_address(capsys: pytest.CaptureFixture[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "host:notaport")
    code, err = run(capsys, "serve", "--campaigns", CAMPAIGNS, "--port", "0")
    assert code == 2 and "KAFKA_BOOTSTRAP 'host:notaport'" in err and "is not HOST:PORT" in err


def test_serve_says_in_words_that_nothing_answers_at_the_broker(capsys: pytest.CaptureFixture[str]) -> None:
    """It printed aiokafka's list of address tuples."""
    code, err = run(capsys, "serve", "--broker", NOBODY, "--campaigns", CAMPAIGNS, "--port", "0")
    assert code == 2 and f"cannot reach the Kafka broker at {NOBODY} (no answer at that address)" in err
    assert "AddressFamily" not in err and "[(" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("broker", BAD_BROKERS[:2])
def test_day_refuses_a_broker_that_is_not_host_port(broker: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    code, err = run(capsys, "loadtest", "day", "--broker", broker, "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2 and f"--broker {broker!r}" in err and "is not HOST:PORT" in err and "invalid literal" not in err
    monkeypatch.setenv("KAFKA_BOOTSTRAP", broker)
    code, err = run(capsys, "loadtest", "day", "--out", str(tmp_path / "o"), "--no-progress")
    assert code == 2 and f"KAFKA_BOOTSTRAP {broker!r}" in err


def test_bench_streams_refuses_a_broker_that_is_not_host_port_before_kafka_sees_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "bench", "streams", "--broker", "nonsense", "--out", str(tmp_path))
    assert code == 2 and err.strip() == ("streambid bench streams: --broker 'nonsense': 'nonsense' is not HOST:PORT with "
                                         "a port from 1 to 65535 (e.g. 127.0.0.1:9092)")


# -- worker and model export --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_worker_refuses_a_click_window_that_is_not_a_positive_number(value: str,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With 0 or less every click fell outside the window; inf and nan crashed at int()."""
    code, err = run(capsys, "worker", "--broker", NOBODY, "--metrics-port", "0", "--click-window", value)
    assert code == 2 and "--click-window" in err
    assert "--click-window SECONDS" in help_of("worker")


def test_model_export_gives_up_on_a_silent_broker_after_its_timeout(silent_broker: str, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """It had no --timeout and said nothing for the Kafka client's 40 s."""
    import streams.commands

    monkeypatch.setattr(streams.commands, "WAIT_NOTE_S", 0.2)
    code, err = run(capsys, "model", "export", "--broker", silent_broker, "--out", str(tmp_path / "m.snap"),
                    "--timeout", "1")
    assert "did not answer within 1 s (--timeout)" in str(code) and not (tmp_path / "m.snap").exists()
    assert err.strip() == f"streambid: waiting for the Kafka broker at {silent_broker} (at most 1 s, --timeout) ..."
    assert "--timeout SECONDS" in help_of("model", "export")


def test_a_slow_broker_is_announced_once_and_a_quick_one_not(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker waits for its broker without a deadline: past a couple of seconds it says which one."""
    import streams.commands

    async def answer_after(seconds: float) -> int:
        await asyncio.sleep(seconds)
        return 7

    monkeypatch.setattr(streams.commands, "WAIT_NOTE_S", 0.1)
    args = argparse.Namespace(broker=NOBODY)
    assert streams.commands.on_broker(args, answer_after(0.4), announce=True) == 7
    assert capsys.readouterr().err == f"streambid: waiting for the Kafka broker at {NOBODY} (Ctrl-C to stop) ...\n"
    assert streams.commands.on_broker(args, answer_after(0.01), announce=True) == 7
    assert streams.commands.on_broker(args, answer_after(0.4)) == 7
    assert capsys.readouterr().err == ""


def test_model_export_creates_the_out_directory_only_when_it_writes(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """It created newdir/sub/ and then said that nothing was changed."""
    from models.commands import _export_problem, _write_snapshot
    from models.snapshot import ModelSnapshot

    out = tmp_path / "newdir" / "sub" / "m.snap"
    code, err = run(capsys, "model", "export", "--broker", NOBODY, "--out", str(out))
    assert "nothing was changed" in str(code) and not (tmp_path / "newdir").exists()
    (tmp_path / "afile").write_text("")
    assert "not a directory" in (_export_problem(tmp_path / "afile" / "sub" / "m.snap") or "")
    assert _export_problem(out) is None and not (tmp_path / "newdir").exists()
    assert _write_snapshot(ModelSnapshot.empty(), out) is None and ModelSnapshot.load(out).version == 0


# -- loadtest --------------------------------------------------------------------------------------------------------


def test_day_caps_bidder_workers_as_serve_caps_workers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bidder.commands import MAX_WORKERS

    # a broker nothing answers at: were the count let through, the day would stop there instead of starting one
    code, err = run(capsys, "loadtest", "day", "--bidder-workers", str(MAX_WORKERS + 1), "--broker", NOBODY,
                    "--out", str(tmp_path), "--no-progress")
    assert code == 2 and "--bidder-workers" in err and f"maximum of {MAX_WORKERS}" in err
    assert build_parser().parse_args(["loadtest", "day", "--bidder-workers", str(MAX_WORKERS)]).bidder_workers == MAX_WORKERS


@pytest.mark.parametrize("target", [":70000/bid", "http://127.0.0.1:abc/", "http://127.0.0.1:0/bid", ""])
def test_loadtest_run_names_target_when_it_has_no_usable_port(target: str, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "loadtest", "run", "--target", target, "--rate", "10", "--duration", "1", "--no-progress",
                    "--out", str(tmp_path))
    assert code == 2 and err.startswith(f"streambid loadtest run: --target {target!r}: ") and "Port out of range" not in err


def test_loadtest_run_help_states_the_exit_statuses() -> None:
    text = help_of("loadtest", "run")
    assert "answered every one with an error status" in text and "only --json prints one" in text


# -- the rest ------------------------------------------------------------------------------------------------------


def test_lease_slice_echoes_the_value_and_its_range_is_in_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "serve", "--no-kafka", "--campaigns", CAMPAIGNS, "--lease-slice", "2", "--port", "0")
    assert code == 2 and "--lease-slice 2: must lie in [0, 0.5]" in err
    text = help_of("serve")
    assert "0 to 0.5, 0 turns leases off" in text and "deadline, 0 to 999" in text


def test_serve_options_name_what_they_take() -> None:
    text = help_of("serve")
    for option in ("--campaigns FILE", "--broker HOST:PORT", "--network-ms MS", "--shed-ms MS", "--explore-below N",
                   "--spill-dir DIR"):
        assert option in text
    for command in (("worker",), ("model", "export"), ("campaign", "set"), ("campaign", "show"), ("bench", "streams")):
        assert "--broker HOST:PORT" in help_of(*command)


def test_every_default_in_the_help_reads_default_colon() -> None:
    parser = build_parser()
    todo, seen = [parser], []
    while todo:
        p = todo.pop()
        seen.append(p)
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend(action.choices.values())
    for p in seen:
        text = " ".join(p.format_help().split())
        assert not re.search(r"\(default [^:]|default out/", text), (p.prog, re.findall(r"\(default [^)]*\)", text))


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"streambid {version('streambid')}"
