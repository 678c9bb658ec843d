"""Airflow plugin: "Search" in the UI's navigation, served by a FastAPI app the API server mounts.

The app (plugins/catalogue_search_web/) answers only logged-in users who may
read Assets; see its docstring and the README's "Search page" section.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from catalogue_search_web.app import URL_PREFIX, create_app

app = create_app()


class CatalogueSearchPlugin(AirflowPlugin):
    name = "catalogue_search"
    fastapi_apps = [{"app": app, "url_prefix": URL_PREFIX, "name": "Catalogue search"}]
    external_views = [
        {
            "name": "Search",  # the nav's labels are short: a longer one is cut ("Catalogue…")
            "href": URL_PREFIX + "/",
            "url_route": "catalogue-search",
            "destination": "nav",
            "nav_top_level": True,
            "icon": URL_PREFIX + "/static/icon.svg",
        }
    ]
