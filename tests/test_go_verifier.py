"""The Go verifier on each webhook's page, compiled and run against a real delivery.

Needs `go` (scripts/ensure-go.sh installs Debian's golang-go); without it the test is skipped,
unless REQUIRE_GO is set, then it fails.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess

import pytest

MAIN = """
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
)

func main() {
	var headers map[string]string
	raw, _ := os.ReadFile(os.Args[2])
	if err := json.Unmarshal(raw, &headers); err != nil {
		panic(err)
	}
	body, _ := os.ReadFile(os.Args[3])
	header := http.Header{}
	for name, value := range headers {
		header.Set(name, value)
	}
	fmt.Println(Verify(os.Args[1], header, body))
}
"""


@pytest.fixture
def go() -> str:
    found = shutil.which("go")
    if found is None:
        reason = "go is not installed (scripts/ensure-go.sh installs it)"
        if os.environ.get("REQUIRE_GO"):
            pytest.fail(f"REQUIRE_GO is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return found


def go_snippet(page: str) -> str:
    """The Go code block of a webhook's page, as a reader would copy it."""
    found = re.search(r"<summary>Go</summary>\s*<pre[^>]*>(.*?)</pre>", page, re.S)
    assert found, "the webhook page shows no Go verifier"
    return html.unescape(found.group(1))


def test_the_go_verifier_on_the_page_accepts_a_real_delivery_and_nothing_else(
    go, user, api, webhook, receiver, service, tmp_path
):
    api.publish(data={"id": "inc_7", "title": "Disk"})
    service.run_until(lambda: receiver.requests)
    got = receiver.requests[0]
    secret = api.get(f"/webhooks/{webhook['id']}/secret").json["secret"]

    code = go_snippet(user.get(f"/settings/webhooks/{webhook['id']}").text)
    (tmp_path / "verify.go").write_text(code.replace("package webhooks", "package main", 1))
    (tmp_path / "main.go").write_text(MAIN)
    (tmp_path / "headers.json").write_text(json.dumps(got.headers))
    (tmp_path / "body").write_bytes(got.body)
    (tmp_path / "modified").write_bytes(got.body.replace(b"Disk", b"Disc"))
    env = {
        **os.environ,
        "GOCACHE": str(tmp_path / "cache"),
        "GOPATH": str(tmp_path / "gopath"),
        "GO111MODULE": "off",
    }
    binary = tmp_path / "verify"
    built = subprocess.run(
        [go, "build", "-o", str(binary), "main.go", "verify.go"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr

    def verify(body: str, key: str = secret) -> str:
        run = subprocess.run(
            [str(binary), key, "headers.json", body],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert run.returncode == 0, run.stderr
        return run.stdout.strip()

    assert verify("body") == "true"
    assert verify("modified") == "false"
    assert verify("body", key="whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB") == "false"
