/** One challenge of a `WWW-Authenticate` header, e.g. `Bearer realm="...",service="...",scope="..."`. */
export interface AuthChallenge {
  /** Lowercase scheme: `basic`, `bearer`, ... */
  scheme: string;
  /** Parameters with lowercase names and unquoted values. */
  params: Record<string, string>;
}

const TOKEN = /[!#$%&'*+\-.^_`|~0-9A-Za-z]+/y;
const TOKEN68 = /[A-Za-z0-9\-._~+/]+=*/y;
const TOKEN68_ALONE = /([A-Za-z0-9\-._~+/]+=*)[ \t]*(?:,|$)/y;

/**
 * Parses a `WWW-Authenticate` header (RFC 7235) into challenges. Tolerant of the spacing and quoting
 * variations that real registries send; an unparseable tail is ignored rather than thrown on.
 */
export function parseWwwAuthenticate(header: string | string[] | undefined): AuthChallenge[] {
  if (header === undefined) return [];
  if (Array.isArray(header)) return header.flatMap((h) => parseWwwAuthenticate(h));
  const s = header;
  const out: AuthChallenge[] = [];
  let i = 0;

  const skipWs = (): void => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\t')) i++;
  };
  const skipSeparators = (): void => {
    while (i < s.length && (s[i] === ' ' || s[i] === '\t' || s[i] === ',')) i++;
  };
  const matchAt = (re: RegExp): string | undefined => {
    re.lastIndex = i;
    const m = re.exec(s);
    if (!m) return undefined;
    i = re.lastIndex;
    return m[0];
  };
  const quoted = (): string => {
    // s[i] === '"'
    i++;
    let v = '';
    while (i < s.length && s[i] !== '"') {
      if (s[i] === '\\' && i + 1 < s.length) i++;
      v += s[i];
      i++;
    }
    i++; // closing quote (or end)
    return v;
  };

  while (i < s.length) {
    skipSeparators();
    const scheme = matchAt(TOKEN);
    if (!scheme) break;
    const challenge: AuthChallenge = { scheme: scheme.toLowerCase(), params: {} };
    out.push(challenge);
    skipWs();
    // A token68 (e.g. `Negotiate abc==`) instead of parameters.
    TOKEN68_ALONE.lastIndex = i;
    const t68 = TOKEN68_ALONE.exec(s);
    if (t68) {
      challenge.params['token68'] = t68[1]!;
      i += t68[1]!.length;
    } else {
      // Parameters: name=value pairs separated by commas, until the next `scheme` begins.
      for (;;) {
        const save = i;
        skipSeparators();
        const name = matchAt(TOKEN);
        if (!name) {
          i = save;
          break;
        }
        skipWs();
        if (s[i] !== '=') {
          i = save; // the next challenge's scheme
          break;
        }
        i++;
        skipWs();
        const value = s[i] === '"' ? quoted() : (matchAt(TOKEN68) ?? matchAt(TOKEN) ?? '');
        challenge.params[name.toLowerCase()] = value;
        skipWs();
        if (s[i] !== ',') break;
      }
    }
    // Advance to the next challenge (after a separating comma).
    skipWs();
    if (i < s.length && s[i] !== ',') {
      // Lenient: skip garbage up to the next comma.
      const next = s.indexOf(',', i);
      if (next < 0) break;
      i = next;
    }
  }
  return out;
}
