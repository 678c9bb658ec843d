"""The catalogue search page: a FastAPI app the Airflow API server mounts (see catalogue_search_page.py)."""
