// What the page says: the API's error codes as plain sentences, and short texts for the status line.
// The API's `detail` is written for developers (it may name a library or a limit); a shopper reads these.

const BY_CODE = {
  empty_query: "Type a few words to search for.",
  query_too_long: "That search is too long. Shorten it to a few words (hybrid mode reads at most a few hundred).",
  rejected_query: "That search could not be read. Try other words.",
  unreadable_image: "That file could not be read as a picture. Try a JPEG or PNG photo of normal size (at most 10 MB).",
  image_too_large: "That picture is too large. Try a smaller one (at most 10 MB and a normal photo size).",
  out_of_range: "That page is past the last result. Go back to the first page.",
  product_not_found: "That product is no longer in the catalogue.",
  image_not_found: "That picture is missing from the catalogue.",
  index_missing: "The catalogue has not been indexed yet. Ask an administrator to run the catalogue_ingest pipeline.",
  endpoint_not_deployed:
    "The search model is not running at the moment. Ask an administrator to start it (query_endpoints_deploy).",
  model_artifact_missing: "The search model has not been built yet. Ask an administrator to build it.",
  model_version_mismatch: "A new search model is being rolled out and does not match the catalogue yet. Try again later.",
  not_configured: "Search is not set up on this server yet. Ask an administrator to configure it.",
  opensearch_unreachable: "The search engine cannot be reached right now. Try again in a minute.",
  query_refused: "The search engine could not answer that search. Try other words or fewer filters.",
  encoder_response: "The search model gave an answer that could not be used. Try again in a moment.",
  search_failed: "Something went wrong while searching. Try again in a moment.",
  internal_error: "Something went wrong on the server. Try again in a moment.",
};

const BY_STATUS = {
  400: "That search could not be run. Check what you typed or uploaded.",
  401: "You are not logged in to Airflow any more. Log in again to keep searching.",
  403: "Your Airflow account may not read the catalogue. Ask an administrator for access to Assets.",
  404: "That could not be found.",
  409: BY_CODE.model_version_mismatch,
  413: BY_CODE.image_too_large,
  422: "That search has a setting the server does not accept. Reset the options and try again.",
};

export const OFFLINE = "The search server could not be reached. Check your connection and try again.";
export const NOT_AN_IMAGE = (name) => `${truncate(name, 60)} is not a picture. Drop or choose a JPEG or PNG file.`;
export const WEIGHTS_ALL_ZERO = "Give at least one of the hybrid weights a value above 0.";

/** A plain sentence for a failed API answer: by the error code when the API sent one, else by the status. */
export function sentenceFor(status, body) {
  const code = body && typeof body.error === "string" ? body.error : null;
  let text = (code && BY_CODE[code]) || BY_STATUS[status];
  if (!text) text = status >= 500 ? "The search service is having trouble. Try again in a moment." : BY_STATUS[400];
  const ref = body && (body.error_id || body.request_id || body.id);
  return typeof ref === "string" && ref.length <= 64 ? `${text} (Reference ${ref}.)` : text;
}

/** At most `max` characters, with an ellipsis where it was cut. */
export function truncate(text, max) {
  const chars = Array.from(String(text ?? ""));
  return chars.length <= max ? chars.join("") : `${chars.slice(0, max - 1).join("")}…`;
}

export const MODE_NAMES = { image: "images", name: "names", hybrid: "hybrid" };

/** The model and quality line under the search box, from `/api/status`. */
export function modelLine(status, mode) {
  if (!status) return "";
  if (!status.index) {
    const err = status.index_error;
    return err ? `Catalogue index: ${sentenceFor(503, err)}` : "";
  }
  const info = status.index;
  const parts = [`Model ${info.model || "unknown"}`];
  if (info.artifact_version) parts.push(`artifact ${truncate(info.artifact_version, 14)}`);
  if (info.random_weights) parts.push("random weights (results carry no meaning)");
  else if (info.pretrained) parts.push(`weights ${info.pretrained}`);
  parts.push(qualityText(info.quality, mode));
  return parts.join(" · ");
}

function qualityText(quality, mode) {
  const figures = quality && quality.modes && quality.modes[mode];
  if (!figures) return "quality not measured";
  const fmt = (v) => (typeof v === "number" ? v.toFixed(3) : "–");
  const chance = quality.chance || {};
  const sample = quality.sample_size ? ` on ${quality.sample_size} products` : "";
  return `quality in ${MODE_NAMES[mode]} mode: recall@10 ${fmt(figures["recall@10"])}, MRR ${fmt(figures.mrr)}`
    + ` (chance ${fmt(chance["recall@10"])}, ${fmt(chance.mrr)})${sample}`;
}
