"""A third-party-style extension: everything here goes through ExtensionApi and the documented hooks."""
from modules.extensions import UiTab
from modules.hooks import HookPoint
from modules.scripts import Control, XyzAxis

SETTING = "test_extension_fade"


def register(api) -> None:
    def fade(event) -> None:
        """Pull the estimate towards zero (grey) in the second half of sampling, by the setting's amount."""
        amount = float(api.option(SETTING, 0.0))
        if amount > 0 and event.step >= event.total_steps // 2:
            event.denoised = event.denoised * (1 - amount)

    def infotext(event) -> None:
        amount = float(api.option(SETTING, 0.0))
        if amount > 0:
            event.fields["Test extension fade"] = amount

    api.add_hook(HookPoint.AFTER_CFG, fade)
    api.add_hook(HookPoint.INFOTEXT, infotext)
    api.on_ui_settings(lambda: [Control(SETTING, "slider", "Fade the image towards grey", 0.0, minimum=0.0,
                                        maximum=1.0, step=0.05)])
    api.on_ui_tabs(lambda: UiTab("Test extension", "test_extension_tab", markdown="Hello from **test-extension**.",
                                 controls=(Control("name", "text", "Your name", "world"),),
                                 action=lambda values: f"Hello, {values['name']}!", action_label="Greet"))

    models_loaded: list[str] = []
    api.on_model_loaded(lambda model: models_loaded.append(model.spec.summary))

    def pasted(text: str, fields: dict) -> None:
        """Pasting an infotext with this extension's field brings its value back as the setting's."""
        if "Test extension fade" in fields:
            fields[SETTING] = float(fields["Test extension fade"])

    api.on_infotext_pasted(pasted)

    def routes(app) -> None:
        @app.get("/test-extension/status")
        def status() -> dict:
            return {"extension": api.name, "fade": float(api.option(SETTING, 0.0)), "models_loaded": models_loaded}

    api.on_app_started(routes)
    api.contribute("xyz_axis", XyzAxis("Test extension fade", float, _no_op_axis, numeric=True))


def _no_op_axis(cell, value) -> None:
    """An axis that only shows that extensions can add them (labels the cells, changes nothing)."""
