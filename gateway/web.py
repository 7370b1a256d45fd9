"""The web pages: / (search by upload or URL, see the result grid; add images; watch jobs) and
/duplicates (review the duplicate groups, change the keeper, resolve)."""
from flask import Blueprint, render_template

bp = Blueprint("web", __name__, template_folder="templates", static_folder="static",
               static_url_path="/static")


@bp.get("/")
def index():
    return render_template("index.html")


@bp.get("/duplicates")
def duplicates():
    return render_template("duplicates.html")
