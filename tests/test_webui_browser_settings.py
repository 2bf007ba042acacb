"""The web UI in a real browser against the real server over tiny models: settings and ui-config defaults, what a
reload keeps, LoRA and embedding cards, installing an extension, login and the refusals of an exposed server."""
from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request

import pytest

from tests.browser_support import (  # noqa: F401 - fixtures
    ARTIFACTS,
    EXTENSIONS_DIR,
    TIMEOUT_MS,
    UI_DEFAULTS,
    VIEWPORT,
    browser,
    chromium_path,
    generate,
    git_repo,
    page,
    prompt_value,
    server,
    set_number,
    shot,
    small_job,
)
from tests.webui_server import EMBEDDING_NAME, LORA_NAME, running_server


def test_lora_and_embedding_cards_insert_into_the_prompt_and_generate(page):
    page.fill("#txt2img_prompt textarea", "a cat")
    page.click("#txt2img_extra_networks")
    page.get_by_role("tab", name="LoRA").first.click()
    page.click(f"#txt2img_en_lora .sd-card[data-name='{LORA_NAME}']")
    page.wait_for_function(
        f"() => document.querySelector('#txt2img_prompt textarea').value.includes('<lora:{LORA_NAME}:1>')")
    page.get_by_role("tab", name="Textual Inversion").first.click()
    page.click(f"#txt2img_en_textual .sd-card[data-name='{EMBEDDING_NAME}']")
    page.wait_for_function(
        f"() => document.querySelector('#txt2img_prompt textarea').value.endsWith('{EMBEDDING_NAME}')")
    assert prompt_value(page) == f"a cat <lora:{LORA_NAME}:1>, {EMBEDDING_NAME}"
    shot(page, "extra-networks")
    small_job(page)
    info = generate(page, keys="Control+Enter")
    assert "Lora hashes" in info and LORA_NAME in info
    page.get_by_role("tab", name="LoRA").first.click()
    page.click(f"#txt2img_en_lora .sd-card[data-name='{LORA_NAME}']")  # a second click takes the tag out again
    page.wait_for_function("() => !document.querySelector('#txt2img_prompt textarea').value.includes('<lora:')")
    assert prompt_value(page) == f"a cat, {EMBEDDING_NAME}"


def test_token_counter_leaves_out_network_tags(page):
    counter = "#txt2img_prompt_tokens .sd-tokens"
    page.fill("#txt2img_prompt textarea", "a red circle <lora:")  # the tag's characters would count as tokens
    page.wait_for_function(f"() => document.querySelector('{counter}').innerText !== '0/75'")
    partial = page.inner_text(counter)
    page.fill("#txt2img_prompt textarea", "a red circle")
    page.wait_for_function(f"() => document.querySelector('{counter}').innerText !== {partial!r}")
    plain = page.inner_text(counter)
    assert plain != "0/75"
    page.fill("#txt2img_prompt textarea", f"a red circle <lora:{LORA_NAME}:0.8>")
    page.wait_for_timeout(1500)
    page.wait_for_function(f"() => document.querySelector('{counter}').innerText === {plain!r}")


def test_setting_survives_reload(page, server):
    page.get_by_role("tab", name="Settings").click()
    shot(page, "settings")
    set_number(page, "setting_page_show_progress_every_n_steps", 3)
    page.click("#settings_submit")
    page.wait_for_function("() => document.querySelector('#settings_result').innerText.includes('changed')")
    assert json.loads((server.data_dir / "config.json").read_text())["show_progress_every_n_steps"] == 3
    page.reload()
    page.get_by_role("tab", name="Settings").click()
    page.wait_for_function(
        "() => document.querySelector('#setting_page_show_progress_every_n_steps input').value === '3'")
    page.fill("#settings_search input, #settings_search textarea", "preview")
    page.wait_for_selector("#setting_page_samples_format", state="hidden")
    assert page.locator("#setting_page_show_progress_every_n_steps").is_visible()
    page.click("#settings_defaults")
    page.wait_for_function(
        "() => document.querySelector('#setting_page_show_progress_every_n_steps input').value === '1'")


def test_ui_config_defaults_fill_the_fields_and_the_defaults_section_saves_new_ones(page, server):
    assert prompt_value(page) == UI_DEFAULTS["txt2img/Prompt/value"]
    assert page.input_value("#txt2img_steps input[type=number]") == "7"
    assert page.get_attribute("#txt2img_steps input[type=range]", "max") == "120"
    saved = json.loads((server.data_dir / "ui-config.json").read_text())
    assert saved["txt2img/Sampling steps/value"] == 7 and saved["txt2img/Width/maximum"] == 2048  # missing keys added
    assert "txt2img/Width/value" not in saved  # the size follows the checkpoint until the user saves one
    page.get_by_role("tab", name="img2img").first.click()
    assert page.input_value("#img2img_steps input[type=number]") == "9"
    page.get_by_role("tab", name="txt2img").first.click()
    set_number(page, "txt2img_steps", 12)
    page.get_by_role("tab", name="Settings").click()
    page.click("#settings_ui_defaults_view")
    page.wait_for_function("() => document.querySelector('#settings_ui_defaults_result').innerText"
                           ".includes('txt2img/Sampling steps/value')")
    assert "12" in page.inner_text("#settings_ui_defaults_result")
    assert "Prompt" not in page.inner_text("#settings_ui_defaults_result")  # unchanged fields are not listed
    page.click("#settings_ui_defaults_apply")
    page.wait_for_function("() => document.querySelector('#settings_ui_defaults_result').innerText"
                           ".includes('defaults saved')")
    assert json.loads((server.data_dir / "ui-config.json").read_text())["txt2img/Sampling steps/value"] == 12


def test_last_prompts_survive_a_reload(page):
    page.fill("#txt2img_prompt textarea", "kept across reloads")
    page.fill("#txt2img_neg_prompt textarea", "blurry")
    page.get_by_role("tab", name="img2img").first.click()
    page.fill("#img2img_prompt textarea", "img2img keeps its own")
    page.reload()
    page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value === "
                           "'kept across reloads'")
    assert page.input_value("#txt2img_neg_prompt textarea") == "blurry"
    small_job(page, steps=2)
    assert generate(page).startswith("kept across reloads\nNegative prompt: blurry")  # the server got them too
    page.get_by_role("tab", name="img2img").first.click()
    page.wait_for_function("() => document.querySelector('#img2img_prompt textarea')?.value === "
                           "'img2img keeps its own'")


def test_settings_page_shows_the_loaded_checkpoint(page):
    page.get_by_role("tab", name="Settings").click()
    assert page.input_value("#setting_page_sd_model_checkpoint input") == page.input_value(
        "#setting_sd_model_checkpoint input") != ""


def test_install_from_local_git_repo_then_apply_and_restart_loads_it_and_quick_settings(browser, server, tmp_path):
    """Last of the tests on the module's server: it restarts that server (same process, same port)."""
    name = f"test-installed-{os.getpid()}"
    target = EXTENSIONS_DIR / name
    assert not target.exists()
    repo = git_repo(tmp_path / "hello-ext")
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("#txt2img_generate")
        page.get_by_role("tab", name="Extensions").click()

        def install(url: str, folder: str = "") -> str:  # each answer differs from the one before
            page.fill("#extension_install_url input, #extension_install_url textarea", url)
            page.fill("#extension_install_name input, #extension_install_name textarea", folder)
            answer = "#extension_install_result :is(.sd-ok, .sd-error)"
            before = page.inner_text(answer) if page.locator(answer).count() else ""
            page.click("#extension_install_button")
            page.wait_for_function("([sel, before]) => { const e = document.querySelector(sel);"
                                   " return e && e.innerText !== before; }", arg=[answer, before])
            return page.inner_text(answer)

        assert "git clone failed" in install(str(tmp_path / "no-such-repo"), name)
        assert not target.exists()
        assert "Invalid extension folder name" in install(str(repo), "../escape")
        assert "Installed into" in install(f"file://{repo}", name)
        assert (target / "scripts" / "hello.py").is_file()
        assert "already exists" in install(str(repo), name)
        shot(page, "extensions")
        page.get_by_role("tab", name="Settings").click()
        page.click("#setting_page_quicksettings_list input")
        page.get_by_role("option", name="emphasis", exact=True).click()
        page.click("#settings_submit")
        page.wait_for_function("() => document.querySelector('#settings_result').innerText"
                               ".includes('changed: quicksettings_list')")
        assert "emphasis" in json.loads((server.data_dir / "config.json").read_text())["quicksettings_list"]
        page.get_by_role("tab", name="Extensions").click()
        page.click("#extensions_apply")  # the page reloads by itself once the restarted server answers
        page.get_by_role("tab", name="Hello ext").click(timeout=300_000)
        page.wait_for_selector("text=Hello from a cloned extension")
        assert page.locator("#setting_emphasis").is_visible()  # the new quick setting, in the top bar
        page.get_by_role("tab", name="Extensions").click()
        assert name in page.inner_text("#extensions_table")
        assert server.process.poll() is None  # the same process, restarted in place
        # the page polls the server while it restarts; failed polls are the only errors allowed
        assert [e for e in errors if "ERR_CONNECTION_REFUSED" not in e] == []
    finally:
        context.close()
        shutil.rmtree(target, ignore_errors=True)


def test_cross_origin_post_is_rejected(server):
    def post(origin: str | None) -> int:
        headers = {"Content-Type": "application/json"}
        if origin:
            headers["Origin"] = origin
        request = urllib.request.Request(server.url + "/gradio_api/queue/join", data=b"{}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    assert post("http://evil.example") == 403
    assert post(server.url) != 403


@pytest.mark.parametrize("flags, message", [
    (("--listen",), "refusing to start"),
    (("--share", "--gradio-auth", "u:p"), "--share needs internet access"),
])
def test_exposed_server_without_credentials_or_internet_refuses_to_start(tmp_path, flags, message):
    with pytest.raises(RuntimeError, match="exited with status 2") as failure:
        with running_server(tmp_path, flags, timeout=60):
            pass
    assert message in str(failure.value)


def test_gradio_auth_login_page_rejects_wrong_credentials_and_extension_install_is_refused(browser, tmp_path):
    with running_server(tmp_path, ("--listen", "--gradio-auth", "alice:wonder")) as s:
        context = browser.new_context(viewport=VIEWPORT)
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        errors = []  # the login page comes without Gradio's endpoint list: nothing in it may break for lack of it
        pg.on("pageerror", lambda e: errors.append(str(e)))
        pg.on("console", lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text
              else None)  # the refused login answers 400
        pg.goto(s.url + "/")
        pg.wait_for_selector("input[type=password]")
        assert "named_endpoints" not in pg.content() or '"named_endpoints": {}' in pg.content()
        assert pg.locator("#txt2img_generate").count() == 0

        def login(password: str) -> None:
            pg.locator("input[type=text], input:not([type])").first.fill("alice")
            pg.fill("input[type=password]", password)
            pg.get_by_role("button", name=re.compile("login", re.IGNORECASE)).click()

        login("wrong")
        pg.wait_for_selector("text=/incorrect|invalid|wrong/i")
        shot(pg, "login-failed")
        assert pg.locator("#txt2img_generate").count() == 0
        login("wonder")
        pg.wait_for_selector("#txt2img_generate")
        pg.get_by_role("tab", name="Extensions").click()  # listening on the network: no installing from a URL
        assert "--enable-insecure-extension-access" in pg.inner_text("#extensions_install_refused")
        assert pg.locator("#extension_install_button").count() == 0
        context.close()
        assert errors == [], f"browser console errors: {errors}"


def test_lora_card_editor_saves_the_sidecar_and_the_card_inserts_preferred_weight_and_activation_text(page, server):
    sidecar = server.data_dir.parent / "models" / "Lora" / f"{LORA_NAME}.json"
    card = f"#txt2img_en_lora .sd-card[data-name='{LORA_NAME}']"
    try:
        page.fill("#txt2img_prompt textarea", "a cat")
        page.click("#txt2img_extra_networks")
        page.get_by_role("tab", name="LoRA").first.click()
        page.click(f"{card} .sd-card-edit")
        page.wait_for_selector("#txt2img_en_dialog", state="visible")
        page.locator("#txt2img_en_description textarea").fill("a tiny test LoRA")
        page.locator("#txt2img_en_activation textarea, #txt2img_en_activation input").first.fill("tinytrigger")
        set_number(page, "txt2img_en_weight", 0.7)
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#txt2img_en_dialog").first.screenshot(path=str(ARTIFACTS / "extra-network-metadata.png"))
        page.click("#txt2img_en_save")
        page.wait_for_selector("#txt2img_en_dialog", state="hidden")
        page.wait_for_selector(f"{card} .sd-card-desc:has-text('a tiny test LoRA')")  # the card shows it at once
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        assert (saved["activation text"], saved["preferred weight"]) == ("tinytrigger", 0.7)
        page.click(f"{card} .sd-card-name")
        page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value.includes('tinytrigger')")
        assert prompt_value(page) == f"a cat <lora:{LORA_NAME}:0.7> tinytrigger"
        page.click(f"{card} .sd-card-name")  # a second click takes the tag and the activation text out
        page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea').value === 'a cat'")
    finally:
        sidecar.unlink(missing_ok=True)  # the module's other tests expect the LoRA's default card text
