"""Icon buttons drawn from SVG (as CSS masks in the text colour), so that they render on machines without an emoji
font and follow the light or dark theme. The label stays in the button as text for screen readers and tooltips."""
from __future__ import annotations

from urllib.parse import quote

import gradio as gr

# 24×24 outlines, stroked in the button's text colour
ICONS = {
    "dice": "<rect x='3' y='3' width='18' height='18' rx='3'/><circle cx='8' cy='8' r='1'/><circle cx='16' cy='8' "
            "r='1'/><circle cx='12' cy='12' r='1'/><circle cx='8' cy='16' r='1'/><circle cx='16' cy='16' r='1'/>",
    "reuse": "<path d='M4 12a8 8 0 1 0 2.3-5.7'/><path d='M4 3v5h5'/><circle cx='12' cy='12' r='1.5'/>",
    "refresh": "<path d='M4 12a8 8 0 0 1 14-5.3L20 9'/><path d='M20 4v5h-5'/><path d='M20 12a8 8 0 0 1-14 5.3L4 15'/>"
               "<path d='M4 20v-5h5'/>",
    "clipboard": "<rect x='5' y='4' width='14' height='17' rx='2'/><rect x='9' y='2' width='6' height='4' rx='1'/>"
                 "<path d='M9 11h6M9 15h6'/>",
    "save": "<path d='M5 3h11l4 4v14H5z'/><path d='M8 3v5h7V3'/><rect x='8' y='13' width='8' height='6'/>",
    "folder": "<path d='M3 6h6l2 2h10v11H3z'/>",
    "zip": "<rect x='4' y='3' width='16' height='18' rx='2'/><path d='M12 3v2M12 7v2M12 11v2'/>"
           "<rect x='10' y='14' width='4' height='4'/>",
    "swap": "<path d='M8 4v16M4 8l4-4 4 4M16 20V4M12 16l4 4 4-4'/>",
    "read": "<path d='M18 6L6 18M6 9v9h9'/>",
    "trash": "<path d='M4 7h16M9 7V4h6v3M6 7l1 14h10l1-14M10 11v6M14 11v6'/>",
}
_SVG = ("<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' stroke='black' stroke-width='2' "
        "stroke-linecap='round' stroke-linejoin='round'>{}</svg>")


def icons_css() -> str:
    """One ``.sd-icon-<name>`` rule per icon (the shared ``.sd-icon`` rules are in static/style.css)."""
    return "\n".join(f'.sd-icon-{name} {{ --sd-icon: url("data:image/svg+xml,{quote(_SVG.format(body))}"); }}'
                     for name, body in ICONS.items())


def icon_button(icon: str, label: str, elem_id: str, with_text: bool = False, **kwargs) -> gr.Button:
    """A button showing ``icon`` (a key of :data:`ICONS`); its ``label`` is shown beside it with ``with_text``."""
    classes = ["sd-icon", f"sd-icon-{icon}"] + (["sd-icon-text"] if with_text else [])
    kwargs.setdefault("scale", 1 if with_text else 0)
    return gr.Button(label, elem_id=elem_id, elem_classes=classes, min_width=40, **kwargs)
