"""The sign-in lockout holds against guesses sent in parallel, and the password-change form counts wrong
current passwords like wrong sign-ins (issue 15: repeated failures lock the account)."""

from __future__ import annotations

import asyncio

import pytest

from node.accounts.http import PEOPLE
from node.accounts.people import MAX_FAILURES, SignInRefused
from node.errors import ApiError
from portal_support import add_person
from support import CIVIL, police_node, run_cli_full_async

pytestmark = pytest.mark.asyncio


async def test_parallel_guesses_cannot_pass_the_lock(tmp_path):
    async with police_node(tmp_path / "node") as node:
        rc, _, err = await run_cli_full_async(["dept", "add", CIVIL, "--name", "桓台县民政局", "--dir",
                                                str(node.config.home)])
        assert rc == 0, err
        password = await asyncio.to_thread(add_person, node.config.home, "zhangsan", CIVIL)
        people = node.app[PEOPLE]
        # Nineteen wrong guesses and the right password, all at once.
        attempts = [people.sign_in("zhangsan", f"wrong-{i}") for i in range(19)] + [people.sign_in("zhangsan", password)]
        results = await asyncio.gather(*attempts, return_exceptions=True)
        assert all(isinstance(r, (SignInRefused, ApiError)) for r in results), results
        checked = [r for r in results if isinstance(r, SignInRefused) and (r.details or {}).get("refused") == "wrong password"]
        assert len(checked) <= MAX_FAILURES  # no more guesses were checked than the lock allows
        with pytest.raises(SignInRefused) as err:
            await people.sign_in("zhangsan", password)
        assert err.value.details["refused"] == "locked"


async def test_wrong_current_passwords_on_the_change_form_lock_the_account(tmp_path):
    async with police_node(tmp_path / "node") as node:
        rc, _, err = await run_cli_full_async(["dept", "add", CIVIL, "--name", "桓台县民政局", "--dir",
                                                str(node.config.home)])
        assert rc == 0, err
        initial = await asyncio.to_thread(add_person, node.config.home, "zhangsan", CIVIL)
        people = node.app[PEOPLE]
        raw, _, must_change = await people.sign_in("zhangsan", initial)
        assert must_change
        person = await people.session(raw)
        await people.change_password(person, None, "桓台民政-2026a", "桓台民政-2026a")
        raw, _, _ = await people.sign_in("zhangsan", "桓台民政-2026a")
        person = await people.session(raw)
        for i in range(MAX_FAILURES - 1):
            with pytest.raises(ApiError) as err:
                await people.change_password(person, f"guess-{i}", "另一个密码-2027b", "另一个密码-2027b")
            assert err.value.code == "INVALID_INPUT"
        with pytest.raises(ApiError) as err:
            await people.change_password(person, "guess-last", "另一个密码-2027b", "另一个密码-2027b")
        assert err.value.code == "UNAUTHENTICATED"
        assert await people.session(raw) is None  # the session ended with the lock
        with pytest.raises(SignInRefused) as err:
            await people.sign_in("zhangsan", "桓台民政-2026a")
        assert err.value.details["refused"] == "locked"
