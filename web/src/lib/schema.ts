// Reading bounds out of a node type's parameter schema (JSON Schema from pydantic).
import type { JsonSchema } from './types';

export interface Bounds {
  min: number;
  max: number;
  multipleOf?: number;
}

/** The numeric bounds of a parameter (through `anyOf: [{...}, {type: null}]`). */
export function bounds(params: JsonSchema, field: string, fallback: Bounds): Bounds {
  const prop = params.properties?.[field];
  const numeric = prop?.anyOf?.find((s) => s.type === 'integer' || s.type === 'number') ?? prop;
  return {
    min: numeric?.minimum ?? fallback.min,
    max: numeric?.maximum ?? fallback.max,
    multipleOf: numeric?.multipleOf ?? fallback.multipleOf,
  };
}

export function choices(params: JsonSchema, field: string): string[] {
  return params.properties?.[field]?.enum ?? [];
}

/** Nearest allowed value: inside the bounds, on the step. */
export function clamp(value: number, b: Bounds): number {
  const stepped = b.multipleOf ? Math.round(value / b.multipleOf) * b.multipleOf : value;
  return Math.min(b.max, Math.max(b.min, stepped));
}

/** Each aspect preset's pixel size, as the params schema gives it (`x-aspect-presets`). */
export function presetSizes(params: JsonSchema): Record<string, [number, number]> {
  return params['x-aspect-presets'] ?? {};
}
