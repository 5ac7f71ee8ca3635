"""The operator console end to end in headless Chromium: an operator signs in, a real agent call through
Envoy needs approval, the approval appears without a reload, the operator approves it (a Cedar decision
on Operator::"alice"), the agent's retry passes once, the task page shows the call, a tripwire's revocation
shows on the revocations page; an operator without the reviewers' role gets 403 and changes nothing; a
form without its CSRF token and a forged cookie are refused. Each page is saved as a screenshot."""
from __future__ import annotations

import base64
import json
import re
import time

from harness import caller_metadata, issue_token

from authz._pb import approvals_pb2 as apb
from authz._pb import approvals_pb2_grpc as apbg

TOOLS = ["payments.transfer", "kb.search", "crm.read", "vault.read", "webhook.post"]
WAIT_MS = 15_000


def agent_token(server, task, agent):
    return issue_token(server.address, agent, task, ['Action::"tools/call"'], [f'Tool::"{t}"' for t in TOOLS],
                       ttl_s=600).access_token


def tool_call(envoy, tok, name, **arguments):
    doc = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    status, _, body = envoy.request("POST", "/mcp", {"content-type": "application/json",
                                                     "authorization": f"Bearer {tok}"}, json.dumps(doc).encode())
    return status, (json.loads(body) if status == 403 else None)


def approval_state(server, approval_id):
    with server.channel() as ch:
        return apbg.ApprovalsStub(ch).Get(apb.ApprovalsGetRequest(id=approval_id),
                                          metadata=caller_metadata("human-reviewer"), timeout=10).approval.state


def sign_in(browser, server, name, key, viewport=None):
    context = browser.new_context(viewport=viewport or {"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(server.console)
    assert page.url.endswith("/console/login")
    page.get_by_label("Operator name").fill(name)
    page.get_by_label("Operator key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/console/approvals")
    return context, page


def until_shown(page, url, selector, text, rows=1):
    """Load `url` until `selector` holds `text` in at least `rows` table rows (the decision log is written
    every 50 ms, then indexed when a page asks)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        page.goto(url)
        if page.locator(f"{selector} tbody tr", has_text=text).count() >= rows:
            return
        assert time.monotonic() < deadline, f"{text!r} never showed in {selector} of {url}"
        time.sleep(0.2)


def test_approve_through_the_console(stack, browser, shots):
    server, envoy, keys = stack
    context, page = sign_in(browser, server, "alice", keys["alice"])
    cookie = {c["name"]: c for c in context.cookies()}["authz_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and not cookie["secure"]  # plain HTTP here
    page.screenshot(path=str(shots / "approvals-empty.png"), full_page=True)
    page.evaluate("window.__notReloaded = true")

    # A payment over 1,000 through Envoy waits for approval; the open page shows it without reloading.
    task, agent = "t-console-pay", "ops-1"
    tok = agent_token(server, task, agent)
    assert tool_call(envoy, tok, "payments.transfer", amount=100)[0] == 200
    status, denied = tool_call(envoy, tok, "payments.transfer", amount=5000, to="acme")
    assert (status, denied["reason"]) == (403, "approval_required")
    aid = denied["approval_id"]
    row = page.locator(f'tr[data-approval="{aid}"]')
    row.wait_for()
    assert page.evaluate("window.__notReloaded") is True
    assert "ops-1" in row.inner_text() and "payments" in row.inner_text()
    page.screenshot(path=str(shots / "approvals.png"), full_page=True)

    # The detail: agent and chain, tool and arguments, the policies that asked.
    row.get_by_role("link").first.click()
    page.wait_for_url(f"**/console/approvals/{aid}")
    body = page.locator("main").inner_text()
    assert "ops-1" in body and 'Tool::"payments.transfer"' in body and "big-payments" in body
    assert '"amount": 5000' in body and '"to": "acme"' in body
    page.screenshot(path=str(shots / "approval.png"), full_page=True)

    # Bob signs in but is no reviewer: the policies refuse him (403) and the approval stays pending.
    bob_context, bob = sign_in(browser, server, "bob", keys["bob"])
    bob.goto(f"{server.console}/approvals/{aid}")
    with bob.expect_response(lambda r: r.request.method == "POST") as answer:
        bob.get_by_role("button", name="Approve").click()
    assert answer.value.status == 403
    assert "may not approve" in bob.locator("#error").inner_text()
    assert approval_state(server, aid) == "pending"
    bob.screenshot(path=str(shots / "forbidden.png"), full_page=True)
    bob_context.close()

    # Alice approves: the agent's identical retry passes once; the next needs a new approval.
    page.get_by_label("Reason (required to reject)").fill("checked with finance")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 200
    assert page.locator("#state").inner_text().startswith("approved by alice")
    assert tool_call(envoy, tok, "payments.transfer", amount=5000, to="acme")[0] == 200
    status, again = tool_call(envoy, tok, "payments.transfer", amount=5000, to="acme")
    assert (status, again["reason"]) == (403, "approval_required") and again["approval_id"] != aid

    # The task page shows the approved call in its timeline.
    until_shown(page, f"{server.console}/tasks/{task}", "#timeline", "payments.transfer", rows=4)
    timeline = page.locator("#timeline").inner_text()
    assert timeline.count("allow") == 2 and timeline.count("approval_required") == 2
    assert page.locator(f'#timeline a[href$="/approvals/{aid}"]').count() >= 1
    page.screenshot(path=str(shots / "task.png"), full_page=True)
    page.goto(f"{server.console}/tasks")
    assert task in page.locator("main").inner_text()
    page.screenshot(path=str(shots / "tasks.png"), full_page=True)
    page.goto(f"{server.console}/approvals/history")
    assert aid in page.content()
    page.screenshot(path=str(shots / "history.png"), full_page=True)
    context.close()


def test_a_tripwire_revocation_shows(stack, browser, shots):
    server, envoy, keys = stack
    context, page = sign_in(browser, server, "alice", keys["alice"])
    task = "t-console-secret"
    tok = agent_token(server, task, "ops-2")
    assert tool_call(envoy, tok, "vault.read")[0] == 200
    assert tool_call(envoy, tok, "webhook.post")[0] == 403  # secret-egress-tripwire: revoke_task
    page.goto(f"{server.console}/revocations")
    assert task in page.locator("#revocations").inner_text()
    page.screenshot(path=str(shots / "revocations.png"), full_page=True)
    until_shown(page, f"{server.console}/decisions?task={task}", "#results", "deny")
    page.screenshot(path=str(shots / "decisions.png"), full_page=True)
    page.locator("#results a").first.click()
    assert "secret-egress-tripwire" in page.locator("main").inner_text()
    page.screenshot(path=str(shots / "decision.png"), full_page=True)
    page.goto(f"{server.console}/policies")
    assert "big-payments" in page.locator("#policies").inner_text()
    assert re.fullmatch(r"[0-9a-f]{64}", page.locator("#digest").inner_text())  # the served set's policy_digest
    page.screenshot(path=str(shots / "policies.png"), full_page=True)
    context.close()


def test_suspend_resume_revoke_and_lift_a_task(stack, browser, shots):
    """Each a Cedar decision of the operator: bob (no reviewer) is refused and nothing changes; alice
    suspends the task (its calls are denied task_suspended), resumes it by approving the quarantine
    approval, revokes it (its calls are denied), then lifts the revocation (they pass again)."""
    server, envoy, keys = stack
    task = "t-console-ops"
    tok = agent_token(server, task, "ops-4")
    assert tool_call(envoy, tok, "kb.search")[0] == 200
    bob_context, bob = sign_in(browser, server, "bob", keys["bob"])
    bob.goto(f"{server.console}/tasks/{task}")
    bob.get_by_label("Reason to suspend").fill("looks odd")
    with bob.expect_response(lambda r: r.request.method == "POST") as answer:
        bob.get_by_role("button", name="Suspend the task").click()
    assert answer.value.status == 403 and "may not suspend" in bob.locator("#error").inner_text()
    with bob.expect_response(lambda r: r.request.method == "POST") as answer:
        bob.goto(f"{server.console}/tasks/{task}")
        bob.get_by_role("button", name="Revoke the task's tokens").click()
    assert answer.value.status == 403
    bob_context.close()
    assert tool_call(envoy, tok, "kb.search")[0] == 200

    context, page = sign_in(browser, server, "alice", keys["alice"])
    page.goto(f"{server.console}/tasks/{task}")
    page.get_by_label("Reason to suspend").fill("incident 42")
    page.get_by_role("button", name="Suspend the task").click()
    assert "Task suspended" in page.locator("#message").inner_text()
    assert page.locator("#task-status").inner_text().startswith("suspended")
    status, denied = tool_call(envoy, tok, "kb.search")
    assert (status, denied["reason"]) == (403, "task_suspended")
    page.screenshot(path=str(shots / "task-suspended.png"), full_page=True)
    page.locator("#task-status a").click()  # the quarantine approval
    page.wait_for_url("**/console/approvals/*")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 200, page.locator("main").inner_text()
    assert page.locator("#state").inner_text().startswith("approved by alice")
    assert tool_call(envoy, tok, "kb.search")[0] == 200  # resumed

    page.goto(f"{server.console}/tasks/{task}")
    page.get_by_role("button", name="Revoke the task's tokens").click()
    assert "Task revoked" in page.locator("#message").inner_text()
    status, denied = tool_call(envoy, tok, "kb.search")
    assert status == 403 and denied["reason"] in ("task_revoked", "token_revoked")
    page.goto(f"{server.console}/revocations")
    page.get_by_role("button", name=f"Lift the revocation of task {task}").click()
    assert f"Lifted the revocation of task {task}" in page.locator("#message").inner_text()
    assert task not in page.locator("#revocations").inner_text()
    assert tool_call(envoy, tok, "kb.search")[0] == 200
    context.close()


def test_nobody_approves_a_call_of_their_own_delegation_chain(stack, browser):
    """Operator ops-5 is a reviewer (the policies permit it), but the call was made by agent ops-5: the
    store refuses (self_approval, 403) and the approval stays pending, as over the gRPC API."""
    server, envoy, keys = stack
    tok = agent_token(server, "t-console-self", "ops-5")
    status, denied = tool_call(envoy, tok, "payments.transfer", amount=3000)
    assert status == 403
    aid = denied["approval_id"]
    context, page = sign_in(browser, server, "ops-5", keys["ops-5"])
    page.goto(f"{server.console}/approvals/{aid}")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Approve").click()
    assert answer.value.status == 403
    assert page.locator("#error").inner_text().startswith("self_approval")
    assert approval_state(server, aid) == "pending"
    context.close()


def test_csrf_and_forged_cookies_are_refused(stack, browser):
    server, envoy, keys = stack
    tok = agent_token(server, "t-console-csrf", "ops-3")
    status, denied = tool_call(envoy, tok, "payments.transfer", amount=7000)
    assert status == 403
    aid = denied["approval_id"]
    context, page = sign_in(browser, server, "alice", keys["alice"])
    url = f"{server.console}/approvals/{aid}/decide"
    # Alice's own session, but no (or a wrong) CSRF token: refused, nothing changes.
    for form in ({"verdict": "approve"}, {"verdict": "approve", "csrf": "forged"}):
        r = context.request.post(url, form=form, max_redirects=0)
        assert r.status == 403
    assert approval_state(server, aid) == "pending"
    # A forged session cookie (a changed name, the signature kept): not signed in.
    good = {c["name"]: c for c in context.cookies()}["authz_console"]
    body, mac = good["value"].split(".")
    forged_body = base64.urlsafe_b64encode(base64.urlsafe_b64decode(body + "==").replace(b"alice", b"admin")) \
        .rstrip(b"=").decode()
    other = browser.new_context()
    for value in (f"{forged_body}.{mac}", "garbage", good["value"][:-2] + "AA"):
        other.clear_cookies()
        other.add_cookies([{**good, "value": value}])
        r = other.request.post(url, form={"verdict": "approve", "csrf": "x"}, max_redirects=0)
        assert r.status == 401
        r = other.request.get(f"{server.console}/approvals", max_redirects=0)
        assert r.status == 303 and r.headers["location"].endswith("/console/login")
    assert approval_state(server, aid) == "pending"
    other.close()
    # A reject needs a reason; with one, the approval is rejected and the task resumes (on_reject "resume").
    page.goto(f"{server.console}/approvals/{aid}")
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Reject").click()
    assert answer.value.status == 400 and "reason" in page.locator("#error").inner_text()
    assert approval_state(server, aid) == "pending"
    page.goto(f"{server.console}/approvals/{aid}")
    page.get_by_label("Reason (required to reject)").fill("not this vendor")
    page.get_by_role("button", name="Reject").click()
    assert page.locator("#state").inner_text() == "rejected by alice: not this vendor"
    assert approval_state(server, aid) == "rejected"
    assert tool_call(envoy, tok, "kb.search")[0] == 200
    assert tool_call(envoy, tok, "payments.transfer", amount=7000)[0] == 403
    context.close()


def test_every_page_has_a_content_security_policy_and_fits_a_phone(stack, browser, shots):
    server, _, keys = stack
    context, page = sign_in(browser, server, "alice", keys["alice"], viewport={"width": 390, "height": 844})
    for name in ("approvals", "tasks", "decisions", "revocations", "policies"):
        r = page.goto(f"{server.console}/{name}")
        assert r.status == 200
        csp = r.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert r.headers["cache-control"] == "no-store"
        # Nothing but the tables scrolls sideways on a phone.
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        page.screenshot(path=str(shots / f"phone-{name}.png"), full_page=True)
    # Keyboard: Tab from the top reaches the skip link, then the navigation links in order; Enter follows one.
    page.goto(f"{server.console}/approvals")
    focused = []
    for _ in range(3):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("document.activeElement.textContent"))
    assert focused == ["Skip to content", "Approvals", "Tasks"]
    page.keyboard.press("Enter")
    page.wait_for_url("**/console/tasks")
    context.close()


def test_sign_in_attempts_are_limited(stack, browser):
    """Wrong keys are refused (401), then refused unchecked (429): 5 failures a minute per worker, so by the
    11th attempt one of the 2 workers has seen 6. Last in this module: the limit counts per client
    address, and every test here signs in from 127.0.0.1."""
    server, _, _ = stack
    anon = browser.new_context()
    p = anon.new_page()
    statuses = []
    while 429 not in statuses and len(statuses) < 11:
        p.goto(f"{server.console}/login")
        p.get_by_label("Operator name").fill("alice")
        p.get_by_label("Operator key").fill("azop_wrong")
        with p.expect_response(lambda r: r.request.method == "POST") as answer:
            p.get_by_role("button", name="Sign in").click()
        statuses.append(answer.value.status)
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429
    assert set(statuses[:-1]) == {401}
    anon.close()
