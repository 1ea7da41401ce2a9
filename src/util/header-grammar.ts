// What an HTTP header a user or a peer hands dfnode for another host may be (RFC 9110 field names; values
// without anything that would end the field or the request).

/** A field name: one or more token characters. */
export function isHeaderName(name: string): boolean {
  return /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name);
}

/** A field value that cannot split the request it is sent in: no CR, LF or NUL. */
export function isHeaderValue(value: string): boolean {
  return !/[\r\n\0]/.test(value);
}
