"""ControlNet-style conditioning, engine side: weight layouts and loading (:mod:`.loader`, :mod:`.layout`),
preprocessors (:mod:`.preprocessors`), units and their API/infotext forms (:mod:`.units`) and the UNet-call
wrapper (:mod:`.apply`). The shipped extension ``extensions/controlnet`` puts them behind a script panel."""
