// Flat-tree index arithmetic (Hypercore FORMAT §1): block i is leaf 2i, parents are odd.
//
// One job: pure integer functions on node indexes. Plain arithmetic rather than bit operators,
// so indexes stay exact up to 2^53 (JavaScript's bit operators stop at 2^31).

/** Number of trailing 1-bits of the index (0 for leaves). */
export function depth (index) {
  let d = 0
  while (index % 2 === 1) {
    index = (index - 1) / 2
    d++
  }
  return d
}

/** Position of the node among the nodes of its depth. */
export function offset (index) {
  return Math.floor(index / 2 ** (depth(index) + 1))
}

/** The node at depth d and offset o. */
export function indexOf (d, o) {
  return (2 * o + 1) * 2 ** d - 1
}

export function parent (index) {
  const d = depth(index)
  return indexOf(d + 1, Math.floor(Math.floor(index / 2 ** (d + 1)) / 2))
}

export function sibling (index) {
  const d = depth(index)
  const o = Math.floor(index / 2 ** (d + 1))
  return indexOf(d, o % 2 === 1 ? o - 1 : o + 1)
}

/** [left, right] children of a parent; null for a leaf. */
export function children (index) {
  if (index % 2 === 0) return null
  const d = depth(index)
  const o = Math.floor(index / 2 ** (d + 1))
  return [indexOf(d - 1, 2 * o), indexOf(d - 1, 2 * o + 1)]
}

/** The left child of a parent; a leaf is its own left child (as flat-tree does). */
export function leftChild (index) {
  if (index % 2 === 0) return index
  return index - 2 ** (depth(index) - 1)
}

export function rightChild (index) {
  if (index % 2 === 0) return index
  return index + 2 ** (depth(index) - 1)
}

export function leftSpan (index) {
  const w = 2 ** (depth(index) + 1)
  return Math.floor(index / w) * w
}

export function rightSpan (index) {
  const w = 2 ** (depth(index) + 1)
  return (Math.floor(index / w) + 1) * w - 2
}

/** [leftmost, rightmost] leaf index covered by the node. */
export function spans (index) {
  return [leftSpan(index), rightSpan(index)]
}

/** Number of nodes in the subtree rooted at index (itself included). */
export function count (index) {
  return 2 ** (depth(index) + 1) - 1
}

/** Number of leaves (blocks) under the node. */
export function countLeaves (index) {
  return 2 ** depth(index)
}

/** Whether node covers leaf position `index`. */
export function contains (node, index) {
  return leftSpan(node) <= index && index <= rightSpan(node)
}

/** Roots of the tree whose leaves are 0..leafEnd-2 (leafEnd = 2 * length), left to right. */
export function fullRoots (leafEnd) {
  if (leafEnd % 2 === 1) throw new RangeError('fullRoots needs an even leaf index (2 * length)')
  const roots = []
  let blocks = leafEnd / 2
  let off = 0
  while (blocks > 0) {
    let f = 1
    while (f * 2 <= blocks) f *= 2
    roots.push(2 * off + f - 1)
    off += f
    blocks -= f
  }
  return roots
}
