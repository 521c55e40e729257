"""Bad command-line input is refused at once: exit status 2, one line naming the flag or file, no traceback, no hang.

Each case runs the real `streambid` command (as `python -m bidder.cli`) and fails before any long work; nothing here
needs a broker, a bidder or the shared data (the broker cases point at an address nothing listens on).
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bidder.arguments import base_url, connections, non_negative, out_dir_problem, port_or_zero, positive
from bidder.cli import build_parser, main
from loadtest.day_commands import MAX_REQUESTS
from tests.conftest import ROOT

NOBODY = "127.0.0.1:9"  # the discard port: nothing listens there
TARGET = ["--target", "http://127.0.0.1:9/bid/test"]


def streambid(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bidder.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, check=False)


def refused(args: list[str], *named: str, status: int = 2, timeout: float = 30.0) -> str:
    """Run, expect `status` and each of `named` in stderr and no traceback; stderr for further checks."""
    r = streambid(*args, timeout=timeout)
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    for name in named:
        assert name in r.stderr, r.stderr
    return r.stderr


def replay_data(path: Path) -> Path:
    """A tiny but valid iPinYou 2997 directory: training stats and a 40-auction test log."""
    path.mkdir(parents=True)
    counts = [0] * 301
    counts[30], counts[60] = 300, 100
    (path / "info.json").write_text(json.dumps({"imp_train": 400, "clk_train": 2, "cost_train": 15_000,
                                                "price_counter_train": counts}))
    (path / "test.theta.txt").write_text("".join(f"{i % 7 == 0:d} {30 + i} 0.00{i % 9 + 1}\n" for i in range(40)))
    return path


def ctr_data(path: Path) -> Path:
    """A tiny iPinYou CTR sample in the fm format."""
    path.mkdir(parents=True)
    (path / "featindex.fm.txt").write_text("weekday:1\t0\nhour:3\t1\ndomain:x\t2\n")
    (path / "train.fm.txt").write_text("0 0:1 1:1\n1 0:1 2:1\n")
    (path / "test.fm.txt").write_text("0 1:1 2:1\n")
    return path


# -- the shared validators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "-inf", "x"])
def test_positive_float_refuses(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        positive(float)(text)


def test_validators_accept_and_bound() -> None:
    assert positive(float)("0.5") == 0.5 and positive(int, 10)("10") == 10
    with pytest.raises(argparse.ArgumentTypeError):
        positive(int, 10)("11")
    with pytest.raises(argparse.ArgumentTypeError):
        positive(int)("1.5")
    assert non_negative(float)("0") == 0.0
    for bad in ("-0.1", "nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            non_negative(float)(bad)
    assert port_or_zero("0") == 0 and port_or_zero("65535") == 65535
    for bad in ("-1", "65536", "http"):
        with pytest.raises(argparse.ArgumentTypeError):
            port_or_zero(bad)


def test_connections_past_the_open_files_limit_are_refused_before_the_run() -> None:
    """Past the limit the run could not connect, and reported an empty load with exit status 0."""
    import resource

    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert connections("64") == 64
    if limit != resource.RLIM_INFINITY:
        refused(["loadtest", "run", *TARGET, "--connections", str(limit + 1)], "--connections", "ulimit -n")


def test_notice_base_must_be_a_url_notices_can_reach() -> None:
    assert base_url("https://bidder.example.com/rtb") == "https://bidder.example.com/rtb"
    for bad in ("bidder.example.com", "ftp://x", "http://x/?a=b", "https://"):
        with pytest.raises(argparse.ArgumentTypeError):
            base_url(bad)
    refused(["serve", "--no-kafka", "--notice-base", "bidder.example.com"], "--notice-base", "https://")


def test_ctrl_c_while_the_commands_load_ends_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """It printed a KeyboardInterrupt traceback when it came before the command started."""
    import bidder.cli

    def interrupted() -> argparse.ArgumentParser:
        raise KeyboardInterrupt

    monkeypatch.setattr(bidder.cli, "build_parser", interrupted)
    assert bidder.cli.main(["campaign", "set", "--dry-run", "x.json"]) == 130


def test_out_dir_problem(tmp_path: Path) -> None:
    assert out_dir_problem(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("")
    assert "--out" in (out_dir_problem(tmp_path / "file") or "")
    assert "--out" in (out_dir_problem(Path("/proc/streambid-nope")) or "")


# -- loadtest run ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "value"), [("--duration", "0"), ("--connections", "0"), ("--tmax", "-5"),
                                             ("--rate", "-1"), ("--pool", "0")])
def test_loadtest_run_refuses_numbers(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["loadtest", "run", *TARGET, "--rate", "10", "--duration", "1", flag, value])
    assert e.value.code == 2


def test_loadtest_run_refuses_bad_inputs_before_sending(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["loadtest", "run", *TARGET, "--rate", "10", "--duration", "0"], "--duration")
    run = ["loadtest", "run", *TARGET, "--rate", "10", "--duration", "1"]
    (tmp_path / "empty.jsonl").write_text("\n")
    for requests in (tmp_path / "missing.jsonl", tmp_path, tmp_path / "empty.jsonl"):
        assert main([*run, "--requests", str(requests), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert "--requests" in err and str(requests) in err
    (tmp_path / "afile").write_text("")
    assert main([*run, "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err


# -- replay ipinyou ----------------------------------------------------------------------------------------------


def test_replay_refuses_a_malformed_data_directory(tmp_path: Path) -> None:
    data = replay_data(tmp_path / "d")
    (data / "info.json").write_text("[1, 2]")
    err = refused(["replay", "ipinyou", "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"], "info.json")
    assert err.startswith("streambid") and err.count("\n") == 1


@pytest.mark.parametrize(("file", "content", "named"), [
    ("test.theta.txt", "0 30 0.001\n1 40\n", "line 2"),
    ("test.theta.txt", "", "no auctions"),
    ("test.theta.txt", "2 30 0.001\n", "line 1"),
    ("test.theta.txt", "0 30 0.001\nLEAKUSER123\t203.0.113.77\tMozilla\n", "line 2: the click field is not a whole number"),
    ("test.theta.txt", "0 30 0.001\n1 40 high\n", "line 2: the pCTR field is not a number"),
    ("test.theta.txt", "0 30 0.001\n1 -4 0.5\n", "line 2: the market_price field is negative"),
    ("test.theta.txt", "0 30 0.001 7\n", "line 1: 4 fields, not 3"),
    ("info.json", '{"imp_train": 0, "clk_train": 1, "cost_train": 5, "price_counter_train": [1]}', "imp_train"),
    ("info.json", '{"imp_train": 10}', "missing"),
    ("info.json", "{", "info.json"),
])
def test_replay_names_what_is_wrong(tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, content: str,
                                    named: str) -> None:
    data = replay_data(tmp_path / "d")
    (data / file).write_text(content)
    assert main(["replay", "ipinyou", "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streambid replay ipinyou: ") and named in err and file in err
    assert "LEAKUSER123" not in err and "203.0.113" not in err  # a raw log given by mistake: its ids stay out


def test_replay_refuses_a_zero_budget_and_a_bad_out_before_replaying(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = replay_data(tmp_path / "d")
    assert main(["replay", "ipinyou", "--data", str(data), "--c0", "1e-300", "--out", str(tmp_path / "o")]) == 2
    assert "--c0" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["replay", "ipinyou", "--data", str(data), "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err


# -- worker ------------------------------------------------------------------------------------------------------


def test_worker_refuses_bad_flags_before_the_broker(capsys: pytest.CaptureFixture[str]) -> None:
    refused(["worker", "--broker", NOBODY, "--checkpoint-every", "0"], "--checkpoint-every", timeout=15)
    for flag, value in (("--metrics-port", "70000"), ("--loglevel", "bogus")):
        with pytest.raises(SystemExit) as e:
            main(["worker", "--broker", NOBODY, flag, value])
        assert e.value.code == 2 and flag in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "usage"), [(["serve", "--bogus"], "usage: streambid serve "),
                                           (["campaign", "set", "--bogus", "x.json"], "usage: streambid campaign set "),
                                           (["--bogus"], "usage: streambid [-h]")])
def test_an_unknown_option_is_named_with_the_usage_of_the_command_it_was_given_to(
        argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(usage) and err.rstrip().endswith("unrecognized arguments: --bogus")


def test_worker_refuses_a_metrics_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = str(s.getsockname()[1])
        assert main(["worker", "--broker", NOBODY, "--metrics-port", port]) == 2  # before the broker is contacted
    err = capsys.readouterr().err
    assert err.startswith("streambid worker: --metrics-port " + port)


def test_worker_metrics_listen_where_metrics_host_says(capsys: pytest.CaptureFixture[str]) -> None:
    """A Prometheus in another container scrapes the worker by name: /metrics must be able to leave loopback."""
    assert main(["worker", "--broker", NOBODY, "--metrics-port", "19102", "--metrics-host", "192.0.2.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streambid worker: --metrics-port 19102: cannot listen on 192.0.2.1")
    from prometheus_client import CollectorRegistry

    from streams.app import StatusBoard
    from streams.commands import serve_http

    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    serve_http(port, CollectorRegistry(auto_describe=False), StatusBoard(), "127.0.0.2")
    with socket.create_connection(("127.0.0.2", port), timeout=5) as c:
        c.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        assert c.recv(64).startswith(b"HTTP/1.0 200")


# -- serve and the model it starts from -------------------------------------------------------------------------


def test_serve_refuses_an_unreadable_model_naming_commands_that_write_one(tmp_path: Path) -> None:
    """The message named `bench ctr` and the worker, neither of which writes a snapshot file."""
    err = refused(["serve", "--no-kafka", "--campaigns", str(ROOT / "deploy" / "campaigns.example.json"),
                   "--model", str(tmp_path / "none.snap")], "--model", "streambid model export", "streambid bench bidder")
    assert "bench ctr" not in err and "or a worker" not in err and len(err.strip().splitlines()) == 1
    assert callable(build_parser().parse_args(["model", "export", "--out", str(tmp_path / "m.snap")]).func)
    assert "streambid model export" in " ".join(streambid("serve", "--help").stdout.split())


def test_serve_refuses_more_workers_than_the_machine_can_use() -> None:
    """A typo of 100000 started processes until memory ran out."""
    from bidder.commands import MAX_WORKERS

    refused(["serve", "--no-kafka", "--workers", "100000"], "--workers", f"maximum of {MAX_WORKERS}")
    assert build_parser().parse_args(["serve", "--workers", str(MAX_WORKERS)]).workers == MAX_WORKERS


def test_serve_says_it_follows_the_config_topic_instead_of_counting_no_campaigns() -> None:
    from bidder.commands import serving_line

    topic = serving_line(0, "http://127.0.0.1:8080/bid", 2, "kafka:9092")
    assert "following the campaign config topic" in topic and "0 campaign" not in topic and "kafka:9092" in topic
    both = serving_line(3, "http://127.0.0.1:8080/bid", 2, "kafka:9092")
    assert "3 campaign(s) from the file" in both and "following the campaign config topic" in both
    assert serving_line(3, "http://127.0.0.1:8080/bid", 1, None) == \
        "serving 3 campaign(s) on http://127.0.0.1:8080/bid with 1 worker(s)"


def test_model_export_refuses_a_bad_out_and_an_unreachable_broker(tmp_path: Path) -> None:
    refused(["model", "export", "--broker", NOBODY, "--out", str(tmp_path)], "--out", "is a directory")
    (tmp_path / "afile").write_text("")
    refused(["model", "export", "--broker", NOBODY, "--out", str(tmp_path / "afile" / "m.snap")], "--out",
            "not a directory")
    err = refused(["model", "export", "--broker", NOBODY, "--out", str(tmp_path / "m.snap")],
                  f"cannot reach the Kafka broker at {NOBODY}", status=1)
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m.snap").exists()


# -- loadtest day ------------------------------------------------------------------------------------------------


def test_day_refuses_an_unreachable_broker_at_once(tmp_path: Path) -> None:
    refused(["loadtest", "day", "--broker", NOBODY, "--out", str(tmp_path / "o"), "--no-progress"], "--broker", NOBODY,
            timeout=30)


@pytest.mark.parametrize(("flag", "value"), [("--speedup", "nan"), ("--speedup", "inf"), ("--speedup", "0"),
                                             ("--requests", str(MAX_REQUESTS + 1)), ("--requests", "0")])
def test_day_refuses_numbers(flag: str, value: str) -> None:
    with pytest.raises(SystemExit) as e:
        main(["loadtest", "day", flag, value])
    assert e.value.code == 2


def test_day_documents_its_request_maximum() -> None:
    assert f"{MAX_REQUESTS:,}" in streambid("loadtest", "day", "--help").stdout


# -- benches -----------------------------------------------------------------------------------------------------


def test_bench_bidder_and_stages_refuse_bad_flags_before_the_floor_phase(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    refused(["bench", "bidder", "--bidder-cmd", "echo {nope}", "--out", str(tmp_path / "o")], "--bidder-cmd", "{nope}")
    for args in (["bidder", "--duration", "0"], ["bidder", "--connections", "0"], ["bidder", "--campaigns", "0"],
                 ["stages", "--duration", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(["bench", *args])
        assert e.value.code == 2 and args[1] in capsys.readouterr().err
    for cmd in ("echo {", "echo 'unclosed", " ", "streambid-nonexistent --port {port}"):
        assert main(["bench", "bidder", "--bidder-cmd", cmd]) == 2  # refused before the floor server's phase
        assert "--bidder-cmd" in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    assert main(["bench", "stages", "--out", str(tmp_path / "afile")]) == 2
    assert "--out" in capsys.readouterr().err


def test_bench_streams_refuses_no_campaigns_before_creating_topics() -> None:
    refused(["bench", "streams", "--broker", NOBODY, "--campaigns", "0"], "--campaigns", timeout=30)


def test_bench_ctr_refuses_bad_settings_and_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    refused(["bench", "ctr", "--alpha", "0"], "--alpha")
    for flag, value in (("--alpha", "-1"), ("--l2", "-5"), ("--beta", "nan"), ("--calibration-prior", "0")):
        with pytest.raises(SystemExit) as e:
            main(["bench", "ctr", flag, value])
        assert e.value.code == 2 and flag in capsys.readouterr().err
    data = ctr_data(tmp_path / "ctr")
    (data / "train.fm.txt").unlink()
    refused(["bench", "ctr", "--data", str(data), "--synthetic", "0"], "train.fm.txt")


@pytest.mark.parametrize(("file", "line"), [("train.fm.txt", "garbage line here\n"), ("test.fm.txt", "0 0:1 99:1\n"),
                                            ("featindex.fm.txt", "weekday:2\tseven\n")])
def test_bench_ctr_names_a_malformed_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], file: str, line: str) -> None:
    data = ctr_data(tmp_path / "ctr")
    with open(data / file, "a") as f:
        f.write(line)
    assert main(["bench", "ctr", "--data", str(data), "--synthetic", "0", "--quiet", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("streambid bench ctr: ") and file in err and "line" in err


def test_bench_ctr_sample_check_accepts_a_valid_sample(tmp_path: Path) -> None:
    from models.commands import ctr_sample_problem

    assert ctr_sample_problem(ctr_data(tmp_path / "ctr")) is None


def test_bench_ctr_refuses_a_sample_with_no_examples(tmp_path: Path) -> None:
    """Empty files (an interrupted download) ended in a traceback after the index was read."""
    data = ctr_data(tmp_path / "ctr")
    (data / "test.fm.txt").write_text("\n")
    refused(["bench", "ctr", "--data", str(data), "--synthetic", "0", "--quiet"], "test.fm.txt", "no examples")


# -- help --------------------------------------------------------------------------------------------------------


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from models.commands import TUNING
    from models.learner import LearnerConfig

    assert "(default: const)" in streambid("loadtest", "run", "--help").stdout
    with pytest.raises(SystemExit):
        main(["bench", "ctr", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "seed of the synthetic stream (default: 7)" in text
    config = LearnerConfig()
    for name, (_, _, default) in TUNING.items():
        assert getattr(config, name) == default  # the help's defaults are the learner's
        assert f"--{name.replace('_', '-')} X" in text
        assert f"(default: {default:g})" in text
    assert math.isclose(config.prior.blend_impressions, 100.0) and "(default: 100)" in text
