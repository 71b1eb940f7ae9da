"""The dissection report: unit thumbnails, concept bar graph, report.json and report.html.

Pure presentation: numpy arrays and plain dicts in, files out; nothing here knows about models.
"""
from jaxdissect.report.bargraph import CATEGORY_ORDER, concept_bargraph_svg, count_concepts
from jaxdissect.report.html import render_report_html, write_report_html
from jaxdissect.report.report_json import read_report_json, write_report_json
from jaxdissect.report.unit_images import (masked_image, save_unit_images, thumbnail, unit_image_path,
                                           unit_strip)

__all__ = [
    "CATEGORY_ORDER", "concept_bargraph_svg", "count_concepts", "masked_image", "read_report_json",
    "render_report_html", "save_unit_images", "thumbnail", "unit_image_path", "unit_strip",
    "write_report_html", "write_report_json",
]
