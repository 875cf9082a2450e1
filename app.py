"""Quality Workbench: the entry point is only a router.

:func:`quality.ui.router.run` sets the page config, shows the (demo-mode) role picker, builds
the ``st.navigation`` menu with the sections that role may see (:mod:`quality.ui.nav` holds
the page registry and the role matrix), puts the dataset picker in the sidebar and runs the
chosen page from ``pages/``.
"""

from __future__ import annotations

from quality.ui import router

router.run()
